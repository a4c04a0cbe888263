package child

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// exchangeAll runs in through e the way the loop does, one batch per call,
// until it is consumed, a request is incomplete or the connection closes.
func exchangeAll(t *testing.T, e *Exchanger, in []byte) (out []byte, consumed, calls int, closed bool) {
	t.Helper()
	for consumed < len(in) && !closed {
		var batch []byte
		var n int
		batch, n, closed = e.Exchange(nil, in[consumed:])
		calls++
		out = append(out, batch...)
		consumed += n
		if n == 0 && !closed {
			break
		}
	}
	return out, consumed, calls, closed
}

func pipeline(targets ...string) []byte {
	var b []byte
	for _, t := range targets {
		b = append(b, get(t)...)
	}
	return b
}

func numberedTargets(prefix string, n int) []string {
	var ts []string
	for i := 1; i <= n; i++ {
		ts = append(ts, prefix+itoa(i))
	}
	return ts
}

func TestExchangeKeepAliveGet(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	in := []byte(get("/hello"))
	out, n, closed := e.Exchange(nil, in)
	if n != len(in) || closed {
		t.Fatalf("consumed %d of %d, closed %v", n, len(in), closed)
	}
	all := responsesIn(t, out)
	if len(all) != 1 {
		t.Fatalf("%d responses, want 1", len(all))
	}
	r := all[0]
	if r.status != 200 || string(r.body) != "/hello" {
		t.Errorf("status %d body %q", r.status, r.body)
	}
	if cl := r.get("Content-Length"); cl != "6" {
		t.Errorf("Content-Length %q, want 6", cl)
	}
	if s := r.get("Server"); s != "procpool" {
		t.Errorf("Server %q", s)
	}
	if ct := r.get("Content-Type"); ct != "text/plain" {
		t.Errorf("Content-Type %q", ct)
	}
	if c, ok := r.header["connection"]; ok {
		t.Errorf("keep-alive HTTP/1.1 response carries Connection: %q", c)
	}
	checkDate(t, r.get("Date"))
}

func checkDate(t *testing.T, date string) {
	t.Helper()
	d, err := time.Parse(http.TimeFormat, date)
	if err != nil {
		t.Fatalf("Date %q: %v", date, err)
	}
	if diff := time.Since(d); diff < -2*time.Second || diff > 2*time.Second {
		t.Errorf("Date %q is %v off", date, diff)
	}
}

// An Exchanger that lives long must not send the Date of its birth.
func TestExchangeDateIsCurrent(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	e.s.clk.sec, e.s.clk.date = 1, []byte("Thu, 01 Jan 1970 00:00:01 GMT")
	out, _, _ := e.Exchange(nil, []byte(get("/")))
	checkDate(t, responsesIn(t, out)[0].get("Date"))
}

func TestExchangePipelined100(t *testing.T) {
	testPipelined100(t, NewExchanger(newTestRoutes()))
}

func testPipelined100(t *testing.T, e *Exchanger) {
	targets := numberedTargets("/", 100)
	in := pipeline(targets...)
	out, consumed, _, closed := exchangeAll(t, e, in)
	if consumed != len(in) || closed {
		t.Fatalf("consumed %d of %d, closed %v", consumed, len(in), closed)
	}
	checkInOrder(t, responsesIn(t, out), targets)
}

func checkInOrder(t *testing.T, all []*response, targets []string) {
	t.Helper()
	if len(all) != len(targets) {
		t.Fatalf("%d responses, want %d", len(all), len(targets))
	}
	for i, r := range all {
		if r.status != 200 || !bytes.HasPrefix(r.body, []byte(targets[i])) {
			t.Fatalf("response %d: status %d body %.20q, want %q", i+1, r.status, r.body, targets[i])
		}
	}
}

// 100 responses of 4 KiB do not fit one 64 KiB batch: Exchange stops at the
// batch and the rest comes from later calls, in order.
func TestExchangeBatchBound(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	targets := numberedTargets("/pad/", 100)
	in := pipeline(targets...)
	first, n, closed := e.Exchange(nil, in)
	if n == 0 || n == len(in) || closed {
		t.Fatalf("first call consumed %d of %d, closed %v; want a partial batch", n, len(in), closed)
	}
	// A batch is 64 KiB of responses, and the response that crosses it.
	const batch = 64 << 10
	if len(first) < batch || len(first) > batch+len(padding)+256 {
		t.Errorf("first batch is %d bytes, want about %d", len(first), batch)
	}
	out, consumed, calls, _ := exchangeAll(t, e, in[n:])
	if n+consumed != len(in) || calls < 6 {
		t.Fatalf("consumed %d of %d in %d more calls", n+consumed, len(in), calls)
	}
	checkInOrder(t, responsesIn(t, append(first, out...)), targets)
}

// The batch bound is per call: responses already in out do not count.
func TestExchangeAppendsPastBatch(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	out := make([]byte, 64<<10+1) // more than a batch (64 KiB) already there
	in := []byte(get("/x"))
	out, n, _ := e.Exchange(out, in)
	if n != len(in) || !bytes.HasSuffix(out, []byte("\r\n\r\n/x")) {
		t.Fatalf("with a full out: consumed %d of %d", n, len(in))
	}
}

func TestExchangeConnectionClose(t *testing.T) {
	for _, c := range []struct{ name, req string }{
		{"Connection: close", "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"},
		{"HTTP/1.0", "GET /a HTTP/1.0\r\n\r\n"},
		{"handler closes", get("/close")},
	} {
		e := NewExchanger(newTestRoutes())
		in := []byte(c.req + get("/after"))
		out, n, closed := e.Exchange(nil, in)
		all := responsesIn(t, out)
		if !closed || n != len(c.req) || len(all) != 1 {
			t.Errorf("%s: closed %v, consumed %d of %d, %d responses", c.name, closed, n, len(c.req), len(all))
			continue
		}
		if got := all[0].get("Connection"); got != "close" {
			t.Errorf("%s: Connection %q, want close", c.name, got)
		}
	}
}

func TestExchangeHTTP10KeepAlive(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	req := "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
	out, n, closed := e.Exchange(nil, []byte(req+req))
	all := responsesIn(t, out)
	if closed || n != 2*len(req) || len(all) != 2 {
		t.Fatalf("closed %v, consumed %d, %d responses", closed, n, len(all))
	}
	for _, r := range all {
		if got := r.get("Connection"); got != "keep-alive" {
			t.Errorf("Connection %q, want keep-alive", got)
		}
	}
}

func TestExchangeHead(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	in := "HEAD /abc HTTP/1.1\r\n" + hostLine + "\r\n" + get("/next")
	out, _, _ := e.Exchange(nil, []byte(in))
	all := responsesIn(t, out, 0)
	if len(all) != 2 {
		t.Fatalf("%d responses, want 2 (a body after HEAD would break framing)", len(all))
	}
	if cl := all[0].get("Content-Length"); cl != "4" {
		t.Errorf("HEAD Content-Length %q, want 4 (that of GET /abc)", cl)
	}
	if string(all[1].body) != "/next" {
		t.Errorf("after HEAD: body %q", all[1].body)
	}
}

func TestExchangeMalformedInPipeline(t *testing.T) {
	h := newTestRoutes()
	e := NewExchanger(h)
	good := pipeline("/1", "/2", "/3")
	bad := "GET /4 HTTP/1.1\r\nHost : a\r\n\r\n"
	in := append(append(good, bad...), get("/after")...)
	out, n, closed := e.Exchange(nil, in)
	if !closed || n != len(good) {
		t.Fatalf("closed %v, consumed %d, want true and %d", closed, n, len(good))
	}
	all := responsesIn(t, out)
	if len(all) != 4 {
		t.Fatalf("%d responses, want 3 and an error", len(all))
	}
	checkInOrder(t, all[:3], []string{"/1", "/2", "/3"})
	if all[3].status != 400 || all[3].get("Connection") != "close" {
		t.Errorf("error response: status %d Connection %q", all[3].status, all[3].get("Connection"))
	}
	if got := h.served.Load(); got != 3 {
		t.Errorf("handler ran %d times, want 3: bytes after the bad request were parsed", got)
	}
}

func TestExchangeErrorStatuses(t *testing.T) {
	for _, c := range []struct {
		req    string
		status int
		text   string // the body: RFC 9110's reason phrase and a newline
	}{
		{"GET / HTTP/2.0\r\n\r\n", 505, "HTTP Version Not Supported\n"},
		{withHeaders("Host: a", "Transfer-Encoding: gzip"), 501, "Not Implemented\n"},
		{withHeaders("Host: a", "Content-Length: "+itoa(int(DefaultLimits.MaxBody)+1)), 413, "Content Too Large\n"},
		{"GET /" + strings.Repeat("a", DefaultLimits.MaxRequestLine) + " HTTP/1.1\r\n\r\n", 414, "URI Too Long\n"},
		{withHeaders("Host: a", "X: "+strings.Repeat("x", DefaultLimits.MaxHeaderBytes)), 431, "Request Header Fields Too Large\n"},
	} {
		out, n, closed := NewExchanger(newTestRoutes()).Exchange(nil, []byte(c.req))
		all := responsesIn(t, out)
		if !closed || n != 0 || len(all) != 1 || all[0].status != c.status {
			t.Errorf("%.30q: closed %v consumed %d, %d responses, want one %d", c.req, closed, n, len(all), c.status)
			continue
		}
		if string(all[0].body) != c.text {
			t.Errorf("%d body %q, want %q", c.status, all[0].body, c.text)
		}
	}
}

func TestExchangeDropsUnsafeHeaders(t *testing.T) {
	out, _, _ := NewExchanger(newTestRoutes()).Exchange(nil, []byte(get("/headers")))
	all := responsesIn(t, out)
	if len(all) != 1 {
		t.Fatalf("%d responses, want 1", len(all))
	}
	r := all[0]
	if r.get("X-Good") != "yes" || r.get("Content-Type") != "text/plain" {
		t.Errorf("X-Good %q Content-Type %q", r.get("X-Good"), r.get("Content-Type"))
	}
	for _, name := range []string{"X-Injected", "X-Split", "X-Name", "X-Nul"} {
		if v, ok := r.header[strings.ToLower(name)]; ok {
			t.Errorf("unsafe header got through: %s: %q", name, v)
		}
	}
}

// A handler cannot add framing headers beside the child's own: the
// response must stay framed by exactly one Content-Length, the child's.
func TestExchangeDropsFramingHeaders(t *testing.T) {
	h := HandlerFunc(func(w *Response, r *Request) {
		w.AddHeader("Content-Length", "100")
		w.AddHeader("content-length", "0")
		w.AddHeader("Transfer-Encoding", "chunked")
		w.AddHeader("TRANSFER-ENCODING", "gzip")
		w.AddHeader("Content-Length ", "7") // not a token: would read as a field with OWS before the colon
		w.AddHeader("X-Kept", "1")
		w.WriteString("body")
	})
	out, _, _ := NewExchanger(h).Exchange(nil, []byte(get("/")+"HEAD / HTTP/1.1\r\n"+hostLine+"\r\n"))
	lower := strings.ToLower(string(out))
	if n := strings.Count(lower, "content-length:"); n != 2 {
		t.Errorf("%d Content-Length fields in two responses, want 2:\n%s", n, out)
	}
	if strings.Contains(lower, "transfer-encoding") || strings.Contains(lower, "content-length ") {
		t.Errorf("a framing header added by the handler got through:\n%s", out)
	}
	all := responsesIn(t, out, 1)
	if len(all) != 2 || string(all[0].body) != "body" || all[0].get("Content-Length") != "4" ||
		all[1].get("Content-Length") != "4" || all[0].get("X-Kept") != "1" {
		t.Errorf("responses %q", out)
	}
}

func TestExchangeChunkedEcho(t *testing.T) {
	in := chunkedPost("/echo", []string{"hello ", "chunked ", "world"}, "X-T: 1")
	out, n, _ := NewExchanger(newTestRoutes()).Exchange(nil, []byte(in))
	all := responsesIn(t, out)
	if n != len(in) || len(all) != 1 || string(all[0].body) != "hello chunked world" {
		t.Fatalf("consumed %d of %d, responses %d", n, len(in), len(all))
	}
}

// 100 Continue goes out once the header block is complete and valid, before
// the body, and only once per request.
func TestExchangeExpectContinue(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	head := "POST /echo HTTP/1.1\r\n" + hostLine + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
	const cont = "HTTP/1.1 100 Continue\r\n\r\n"

	out, n, _ := e.Exchange(nil, []byte(head[:len(head)-2]))
	if len(out) != 0 || n != 0 {
		t.Fatalf("incomplete header block: answered %q", out)
	}
	out, n, _ = e.Exchange(nil, []byte(head))
	if string(out) != cont || n != 0 {
		t.Fatalf("complete header block: answered %q, want %q", out, cont)
	}
	out, n, _ = e.Exchange(nil, []byte(head+"hel"))
	if len(out) != 0 || n != 0 {
		t.Fatalf("partial body: answered %q, want nothing more", out)
	}
	out, n, _ = e.Exchange(nil, []byte(head+"hello"))
	all := responsesIn(t, out)
	if n != len(head)+5 || len(all) != 1 || string(all[0].body) != "hello" {
		t.Fatalf("whole request: consumed %d, %d responses", n, len(all))
	}
}

func TestExchangeExpectNotBeforeError(t *testing.T) {
	head := "POST / HTTP/1.1\r\n" + hostLine + "Expect: 100-continue\r\n"
	out, _, _ := NewExchanger(newTestRoutes()).Exchange(nil, []byte(head))
	if len(out) != 0 {
		t.Fatalf("headers still arriving: answered %q", out)
	}
	out, _, closed := NewExchanger(newTestRoutes()).Exchange(nil, []byte(head+"Bad Header: x\r\n\r\n"))
	if !closed || !bytes.HasPrefix(out, []byte("HTTP/1.1 400 ")) {
		t.Fatalf("bad header after Expect: answered %q", out)
	}
	out, _, _ = NewExchanger(newTestRoutes()).Exchange(nil, []byte("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"))
	if len(out) != 0 {
		t.Fatalf("HTTP/1.0 client got %q", out)
	}
}

// Every call stands alone: what an earlier call left incomplete does not
// change how a later, unrelated input is parsed.
func TestExchangeCallsAreIndependent(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	partial := "GET /" + strings.Repeat("a", 60)
	if out, n, _ := e.Exchange(nil, []byte(partial)); n != 0 || len(out) != 0 {
		t.Fatalf("partial request line: consumed %d, answered %q", n, out)
	}
	in := []byte(get("/"))
	out, n, _ := e.Exchange(nil, in)
	if n != len(in) || len(responsesIn(t, out)) != 1 {
		t.Fatalf("a complete request after an unrelated partial one: consumed %d of %d, answered %q", n, len(in), out)
	}
}

// The Exchanger parses only what the caller passes, and keeps nothing: a
// chunked request that is not complete is left as it was, so the caller
// can pass it again with the rest.
func TestExchangeLeavesPartialChunkedInput(t *testing.T) {
	e := NewExchanger(newTestRoutes())
	full := []byte(chunkedPost("/echo", []string{"ab", "cde", "f"}))
	part := bytes.Clone(full[:len(full)-6])
	out, n, closed := e.Exchange(nil, part)
	if len(out) != 0 || n != 0 || closed {
		t.Fatalf("partial request: %q, consumed %d, closed %v", out, n, closed)
	}
	if !bytes.Equal(part, full[:len(part)]) {
		t.Fatalf("partial input changed to %q", part)
	}
	out, n, _ = e.Exchange(nil, append(part, full[len(part):]...))
	if all := responsesIn(t, out); n != len(full) || len(all) != 1 || string(all[0].body) != "abcdef" {
		t.Fatalf("whole request: consumed %d of %d, %q", n, len(full), out)
	}
}
