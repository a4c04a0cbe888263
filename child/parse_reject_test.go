package child

import "testing"

func TestParseRejects(t *testing.T) {
	for _, c := range rejectCases {
		_, n, status, _ := parseString(c.raw)
		if n != 0 || status != c.status {
			t.Errorf("%s: parse(%q) = (%d, %d), want (0, %d)", c.name, c.raw, n, status, c.status)
		}
	}
}

// The rejections that depend on the limits, checked against DefaultLimits
// as well, one byte either side.
func TestParseDefaultLimits(t *testing.T) {
	lim := DefaultLimits
	check := func(name, raw string, want int) {
		t.Helper()
		var r Request
		var need int
		n, status := parse([]byte(raw), &r, &lim, &need)
		if status != want || (want == 0) != (n == len(raw)) {
			t.Errorf("%s: (%d, %d), want status %d", name, n, status, want)
		}
	}
	check("request line at the limit", requestLineOf(lim.MaxRequestLine), 0)
	check("request line one over", requestLineOf(lim.MaxRequestLine+1), 414)
	check("header block at the limit", headerBlockOf(lim.MaxHeaderBytes), 0)
	check("header block one over", headerBlockOf(lim.MaxHeaderBytes+1), 431)
	check("header count at the limit", headerCountOf(lim.MaxHeaders), 0)
	check("header count one over", headerCountOf(lim.MaxHeaders+1), 431)
	check("body at the limit", withHeaders("Host: a", "Content-Length: "+itoa(int(lim.MaxBody)))+string(make([]byte, lim.MaxBody)), 0)
	check("body one over", withHeaders("Host: a", "Content-Length: "+itoa(int(lim.MaxBody)+1)), 413)
}

// A prefix of an over-long request line must wait rather than answer 414
// while the line may still end within the limit.
func TestParseRequestLinePrefixAtLimit(t *testing.T) {
	raw := requestLineOf(testLimits.MaxRequestLine)
	line := raw[:testLimits.MaxRequestLine+1] // the line and its CR
	if _, n, status, _ := parseString(line); n != 0 || status != 0 {
		t.Fatalf("line of the limit with its CR: (%d, %d), want (0, 0)", n, status)
	}
	over := requestLineOf(testLimits.MaxRequestLine + 1)
	if _, _, status, _ := parseString(over[:testLimits.MaxRequestLine+2]); status != 414 {
		t.Fatalf("line over the limit, no LF yet: status %d, want 414", status)
	}
}
