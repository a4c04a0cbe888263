package child

import (
	"strings"
	"testing"
)

// parseString parses raw (copied: chunked bodies are decoded in place) under
// testLimits.
func parseString(raw string) (r *Request, n, status, need int) {
	r = &Request{}
	lim := testLimits
	n, status = parse([]byte(raw), r, &lim, &need)
	return r, n, status, need
}

// mustParse parses raw, which must be exactly one complete request.
func mustParse(t *testing.T, raw string) *Request {
	t.Helper()
	r, n, status, _ := parseString(raw)
	if status != 0 || n != len(raw) {
		t.Fatalf("parse(%q) = (%d, %d), want (%d, 0)", raw, n, status, len(raw))
	}
	return r
}

func wantBytes(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	if string(got) != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

func TestParseGet(t *testing.T) {
	r := mustParse(t, "GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nX-Token:  abc \t\r\nAccept: */*\r\n\r\n")
	wantBytes(t, "Method", r.Method, "GET")
	wantBytes(t, "Target", r.Target, "/a/b?x=1&y=2")
	wantBytes(t, "Path", r.Path, "/a/b")
	wantBytes(t, "Query", r.Query, "x=1&y=2")
	wantBytes(t, "X-Token", r.Header("X-Token"), "abc")
	if r.Minor != 1 || r.Body != nil || !r.KeepAlive() || r.expect {
		t.Errorf("Minor %d, Body %q, KeepAlive %v, expect %v", r.Minor, r.Body, r.KeepAlive(), r.expect)
	}
}

func TestParseQuerySplit(t *testing.T) {
	r := mustParse(t, get("/p?"))
	wantBytes(t, "Path", r.Path, "/p")
	if r.Query == nil || len(r.Query) != 0 {
		t.Errorf("Query = %q (nil %v), want empty and not nil", r.Query, r.Query == nil)
	}
	r = mustParse(t, get("/p?a?b=c"))
	wantBytes(t, "Path", r.Path, "/p")
	wantBytes(t, "Query", r.Query, "a?b=c")
	r = mustParse(t, get("/p"))
	if r.Query != nil {
		t.Errorf("Query = %q, want nil", r.Query)
	}
	r = mustParse(t, get("*"))
	wantBytes(t, "Path", r.Path, "*")
}

func TestParseHeaderLookupIgnoresCase(t *testing.T) {
	r := mustParse(t, withHeaders("hOsT: h", "Content-TYPE: text/x", "x-a: 1", "X-A: 2"))
	wantBytes(t, "host", r.Header("HOST"), "h")
	wantBytes(t, "content-type", r.Header("content-type"), "text/x")
	wantBytes(t, "x-a (first wins)", r.Header("X-a"), "1")
	if v := r.Header("X-Missing"); v != nil {
		t.Errorf("X-Missing = %q, want nil", v)
	}
	var names []string
	r.Headers(func(name, value []byte) { names = append(names, string(name)+"="+string(value)) })
	if got := strings.Join(names, ","); got != "hOsT=h,Content-TYPE=text/x,x-a=1,X-A=2" {
		t.Errorf("Headers in order = %s", got)
	}
}

func TestParseHead(t *testing.T) {
	r := mustParse(t, "HEAD /h HTTP/1.1\r\n"+hostLine+"\r\n")
	wantBytes(t, "Method", r.Method, "HEAD")
	wantBytes(t, "Path", r.Path, "/h")
}

func TestParsePostContentLength(t *testing.T) {
	r := mustParse(t, post("/p", "hello"))
	wantBytes(t, "Method", r.Method, "POST")
	wantBytes(t, "Body", r.Body, "hello")

	r = mustParse(t, "POST / HTTP/1.1\r\n"+hostLine+"Content-Length: 0\r\n\r\n")
	if r.Body != nil {
		t.Errorf("empty body = %q, want nil", r.Body)
	}
}

func TestParseContentLengthNeedsBody(t *testing.T) {
	raw := post("/p", "hello")
	head := raw[:len(raw)-len("hello")]
	_, n, status, need := parseString(head + "he")
	if n != 0 || status != 0 || need != len(raw) {
		t.Fatalf("partial body: (%d, %d) need %d, want (0, 0) need %d", n, status, need, len(raw))
	}
}

func TestParseChunked(t *testing.T) {
	raw := "POST /c HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\n\r\n" +
		"5;name=val\r\nhello\r\n6 ; a=\"b\"; c\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n"
	r := mustParse(t, raw)
	wantBytes(t, "Body", r.Body, "hello world0123456789")
	if r.Header("X-Sum") != nil {
		t.Errorf("trailer field exposed as header")
	}

	r = mustParse(t, withHeaders("Host: a", "Transfer-Encoding: Chunked")+"0\r\n\r\n")
	if r.Body != nil {
		t.Errorf("empty chunked body = %q, want nil", r.Body)
	}
}

func TestParseChunkedLeavesFollowingRequest(t *testing.T) {
	first := chunkedPost("/1", []string{"ab", "cde"}, "T: v")
	buf := []byte(first + get("/2"))
	var r Request
	var need int
	lim := testLimits
	n, status := parse(buf, &r, &lim, &need)
	if status != 0 || n != len(first) {
		t.Fatalf("parse = (%d, %d), want (%d, 0)", n, status, len(first))
	}
	wantBytes(t, "Body", r.Body, "abcde")
	n, status = parse(buf[n:], &r, &lim, &need)
	if status != 0 || string(r.Path) != "/2" {
		t.Fatalf("second request: (%d, %d) path %q", n, status, r.Path)
	}
}

func TestParseHTTP10(t *testing.T) {
	r := mustParse(t, "GET / HTTP/1.0\r\n\r\n")
	if r.Minor != 0 || r.KeepAlive() {
		t.Errorf("HTTP/1.0: Minor %d KeepAlive %v, want 0 false", r.Minor, r.KeepAlive())
	}
	r = mustParse(t, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
	if !r.KeepAlive() {
		t.Errorf("HTTP/1.0 with Connection: keep-alive closes")
	}
	r = mustParse(t, "GET / HTTP/1.0\r\nHost: a\r\n\r\n")
	if r.KeepAlive() {
		t.Errorf("HTTP/1.0 with Host keeps alive")
	}
}

func TestParseConnectionClose(t *testing.T) {
	r := mustParse(t, withHeaders("Host: a", "Connection: upgrade, Close"))
	if r.KeepAlive() {
		t.Errorf("Connection: upgrade, Close keeps alive")
	}
	r = mustParse(t, withHeaders("Host: a", "Connection: keep-alive"))
	if !r.KeepAlive() {
		t.Errorf("HTTP/1.1 keep-alive closes")
	}
}

func TestParseLeadingCRLFs(t *testing.T) {
	r := mustParse(t, "\r\n\r\n\r\n"+get("/x"))
	wantBytes(t, "Path", r.Path, "/x")
}

func TestParseExpectWaitsForHeaderBlock(t *testing.T) {
	full := "POST / HTTP/1.1\r\n" + hostLine + "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"
	r, n, status, _ := parseString(full[:len(full)-2])
	if n != 0 || status != 0 || r.expect {
		t.Errorf("headers incomplete: (%d, %d) expect %v, want (0, 0) false", n, status, r.expect)
	}
	r, n, status, _ = parseString(full)
	if n != 0 || status != 0 || !r.expect {
		t.Errorf("headers complete, body missing: (%d, %d) expect %v, want (0, 0) true", n, status, r.expect)
	}
}

func TestParseAtLimits(t *testing.T) {
	mustParse(t, requestLineOf(testLimits.MaxRequestLine))
	mustParse(t, headerBlockOf(testLimits.MaxHeaderBytes))
	mustParse(t, headerCountOf(testLimits.MaxHeaders))
	mustParse(t, post("/", strings.Repeat("b", int(testLimits.MaxBody))))
	r := mustParse(t, chunkedPost("/", []string{strings.Repeat("c", int(testLimits.MaxBody))}))
	if len(r.Body) != int(testLimits.MaxBody) {
		t.Errorf("chunked body at the limit: %d bytes", len(r.Body))
	}
}

func TestParseValidCases(t *testing.T) {
	for _, c := range validCases {
		ns, status, _ := parseAll([]byte(c.raw), testLimits)
		if len(ns) != c.requests || status != c.status {
			t.Errorf("%s: %d requests then status %d, want %d then %d", c.name, len(ns), status, c.requests, c.status)
		}
	}
}
