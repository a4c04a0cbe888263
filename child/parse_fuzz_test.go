package child

import (
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks the parser on arbitrary input under testLimits: it never
// panics; what it accepts lies within the input and has a valid method and
// target; the accepted bytes, fed in two parts at any cut, are never
// rejected (the first part waits, the whole is accepted again); and no
// prefix of any input gets a verdict that contradicts the whole input's.
//
//	go test -run=NONE -fuzz=FuzzParse ./child
func FuzzParse(f *testing.F) {
	for _, c := range validCases {
		f.Add([]byte(c.raw))
	}
	for _, c := range rejectCases {
		f.Add([]byte(c.raw))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := testLimits
		var r Request
		var need int
		n, status := parse(slices.Clone(data), &r, &lim, &need)
		switch {
		case n < 0 || n > len(data):
			t.Fatalf("accepted %d bytes of %d", n, len(data))
		case n > 0 && status != 0:
			t.Fatalf("accepted %d bytes with status %d", n, status)
		case status != 0 && !knownStatus(status):
			t.Fatalf("unexpected status %d", status)
		}
		if n > 0 {
			if !validMethod(r.Method) || !validTarget(r.Target) {
				t.Fatalf("accepted method %q target %q", r.Method, r.Target)
			}
			checkCuts(t, data[:n])
		}
		if len(data) <= 1024 { // quadratic: keep it to inputs the limits make interesting
			if k, problem := checkPrefixes(data, lim); k >= 0 {
				t.Fatalf("prefix of %d bytes %q %s", k, data[:k], problem)
			}
		}
	})
}

// checkCuts feeds one accepted request as a connection would receive it in
// two reads: the first part alone must wait (with a need the request
// satisfies), and the whole must be accepted again.
func checkCuts(t *testing.T, req []byte) {
	lim := testLimits
	var r Request
	var need int
	for k := 0; k < len(req); k++ {
		n, status := parse(slices.Clone(req[:k]), &r, &lim, &need)
		if n != 0 || status != 0 || need > len(req) {
			t.Fatalf("first %d bytes of an accepted %d-byte request: (%d, %d) need %d", k, len(req), n, status, need)
		}
	}
	if n, status := parse(slices.Clone(req), &r, &lim, &need); n != len(req) || status != 0 {
		t.Fatalf("accepted request parsed again: (%d, %d)", n, status)
	}
}

func knownStatus(s int) bool {
	switch s {
	case 400, 413, 414, 431, 501, 505:
		return true
	}
	return false
}

// validMethod and validTarget restate RFC 9110's tchar and RFC 3986's
// request-target characters independently of the parser's tables.
func validMethod(m []byte) bool { return alnumOr(m, "!#$%&'*+-.^_`|~") }

func validTarget(t []byte) bool { return alnumOr(t, "-._~:/?#[]@!$&'()*+,;=%") }

// alnumOr reports whether b is not empty and holds only letters, digits and
// the bytes of extra.
func alnumOr(b []byte, extra string) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isAlnum(c) && !strings.ContainsRune(extra, rune(c)) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// FuzzParseResumed feeds arbitrary input to the parser as a connection
// receives it, in reads cut where the fuzzer says (a first read of any
// length, then reads of 1 to 64 bytes), resuming a chunked body where each
// read left it. It checks that the input parses as it does whole, with the
// same requests, the same decoded bodies and the same status, and that the
// chunked decoder's work stays linear in the input.
//
//	go test -run=NONE -fuzz=FuzzParseResumed ./child
func FuzzParseResumed(f *testing.F) {
	for i, c := range append(slices.Clone(validCases), rejectCases...) {
		f.Add([]byte(c.raw), uint16(len(c.raw)/2), uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, first uint16, step uint8) {
		k := int(first) % (len(data) + 1)
		pieces := append([][]byte{data[:k]}, splitEvery(data[k:], int(step)%64+1)...)
		if problem := checkFed(data, pieces, testLimits); problem != "" {
			t.Fatalf("first read %d bytes, then %d at a time: %s", k, int(step)%64+1, problem)
		}
	})
}
