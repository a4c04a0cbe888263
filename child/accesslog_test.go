package child

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// loggedChild runs a child with an access log and returns a function that
// stops it (which flushes the log) and returns the log's lines.
func loggedChild(t *testing.T, lim Limits, h Handler) (*testChild, func() []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "access.log")
	al, err := OpenAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	tc := startChild(t, Config{AccessLog: al, Limits: lim}, h)
	return tc, func() []string {
		t.Helper()
		tc.stop(t)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
}

// A rejected request is logged as it was sent: its request line as the
// client wrote it (so the version it asked for), the size of the error
// body that went out, and the Referer and User-Agent when the header
// block got as far as them, wherever in the request the limit struck.
func TestAccessLogRejections(t *testing.T) {
	lim := DefaultLimits
	lim.MaxBody = 100
	tc, lines := loggedChild(t, lim, newTestRoutes())
	chunks := func(n int) string {
		return strings.Repeat("a\r\n0123456789\r\n", n)
	}
	cases := []struct {
		raw    []string // sent one write at a time, each read by the child before the next
		status int
		want   string // the line after the date
	}{
		{[]string{"GET /a b HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/1\r\n\r\n"},
			400, `"GET /a b HTTP/1.1" 400 12 "-" "-"`},
		{[]string{"GET /x HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/2\r\nBad Header: 1\r\n\r\n"},
			400, `"GET /x HTTP/1.1" 400 12 "-" "ua/2"`},
		{[]string{"GET / HTTP/2.0\r\nHost: x\r\n\r\n"},
			505, `"GET / HTTP/2.0" 505 27 "-" "-"`},
		{[]string{"GET /\"\x01 HTTP/1.0\r\n\r\n"},
			400, `"GET /\x22\x01 HTTP/1.0" 400 12 "-" "-"`},
		{[]string{"GET /" + strings.Repeat("a", lim.MaxRequestLine) + " HTTP/1.1\r\n\r\n"},
			414, `"-" 414 13 "-" "-"`},
		{[]string{"POST /echo HTTP/1.1\r\nHost: x\r\nReferer: /r\r\nUser-Agent: ua/3\r\nContent-Length: 101\r\n\r\n"},
			413, `"POST /echo HTTP/1.1" 413 18 "/r" "ua/3"`},
		{[]string{"POST /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks(5),
			chunks(6)}, // over MaxBody in the second read: the decoder resumes, then refuses
			413, `"POST /echo HTTP/1.1" 413 18 "-" "ua/4"`},
		{[]string{"POST /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks(2),
			"zz\r\n"},
			400, `"POST /echo HTTP/1.1" 400 12 "-" "ua/5"`},
		{[]string{"GET /ok HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/6\r\n\r\n"},
			200, `"GET /ok HTTP/1.1" 200 3 "-" "ua/6"`},
	}
	for _, c := range cases {
		conn := tc.dial(t)
		for i, part := range c.raw {
			conn.send(t, part)
			if i < len(c.raw)-1 {
				server, client := loopPorts(t, tc, conn)
				if !loopWaitSocket(t, server, client, func(s loopSocket) bool { return s.rx == 0 && s.peerTx == 0 }) {
					t.Fatalf("the child did not read %q", part)
				}
			}
		}
		if r := conn.read(t); r.status != c.status {
			t.Fatalf("%q: status %d, want %d", c.raw, r.status, c.status)
		}
	}
	got := lines()
	if len(got) != len(cases) {
		t.Fatalf("%d lines logged for %d requests:\n%s", len(got), len(cases), strings.Join(got, "\n"))
	}
	stamp := regexp.MustCompile(`^127\.0\.0\.1 - - \[[^]]+\] `)
	for i, c := range cases {
		line := got[i]
		if !stamp.MatchString(line) || stamp.ReplaceAllString(line, "") != c.want {
			t.Errorf("logged\n\t%s\nwant\n\t127.0.0.1 - - [date] %s", line, c.want)
		}
	}
}

// A raw response is logged with the size of what follows its head, as
// nginx logs $body_bytes_sent, however the handler's writes and flushes cut
// the head, and past a 100 Continue to the final response; a 204 with a
// body written to it is logged with none, as none is sent.
func TestAccessLogBodySize(t *testing.T) {
	writes := map[string][]string{ // a Flush after each write but the last
		"/split":    {"HTTP/1.1 200 OK\r\nContent-Length: 5\r", "\n\r", "\nhel", "lo"},
		"/continue": {"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		"/empty":    {"HTTP/1.1 204 No Content\r\n\r\n"},
		"/one":      {"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nHello World"},
	}
	tc, lines := loggedChild(t, DefaultLimits, HandlerFunc(func(w *Response, r *Request) {
		w.SetStatus(200)
		switch string(r.Path) {
		case "/empty":
			w.SetStatus(204)
		case "/plain204":
			w.SetStatus(204)
			w.Write([]byte("not sent"))
			return
		}
		parts := writes[string(r.Path)]
		for i, p := range parts {
			w.WriteRaw([]byte(p))
			if i < len(parts)-1 {
				if err := w.Flush(); err != nil {
					t.Errorf("flush: %v", err)
				}
			}
		}
	}))
	c := tc.dial(t)
	for _, path := range []string{"/split", "/continue", "/empty", "/one", "/plain204"} {
		r := c.roundTrip(t, path)
		if r.status == 100 {
			r = c.read(t)
		}
		if r.status/100 != 2 {
			t.Fatalf("%s: status %d", path, r.status)
		}
	}
	want := []string{`"GET /split HTTP/1.1" 200 5 `, `"GET /continue HTTP/1.1" 200 2 `,
		`"GET /empty HTTP/1.1" 204 - `, `"GET /one HTTP/1.1" 200 11 `, `"GET /plain204 HTTP/1.1" 204 - `}
	got := lines()
	if len(got) != len(want) {
		t.Fatalf("%d lines logged for %d requests:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("logged\n\t%s\nwant it to hold\n\t%s", got[i], w)
		}
	}
}

// The buffer's own bound (which no request within the limits reaches) is
// answered and logged like any refusal: here the limits shrink under a
// request that is arriving.
func TestAccessLogBufferBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	al, err := OpenAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	p := newPairConn(t, newTestRoutes(), DefaultLimits)
	p.s.alog = newLogBuf(al)
	p.send(t, []byte("POST /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/b\r\nContent-Length: 1000000\r\n\r\n"))
	p.lim.MaxBody = 0
	body := bigBody()[:256<<10]
	for i := 0; i < len(body) && !p.closed && p.c.state != stLinger; i += 4 << 10 {
		p.send(t, body[i:i+4<<10])
	}
	all := responsesIn(t, p.out)
	if len(all) != 1 || all[0].status != 413 {
		t.Fatalf("%d responses (%q), want one 413", len(all), p.out)
	}
	p.s.alog.flush(p.s.clk.now)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^- - - \[[^]]+\] "POST /echo HTTP/1\.1" 413 18 "-" "ua/b"\n$`).Match(b) {
		t.Errorf("logged %q", b)
	}
	if n := p.s.st.ParseErrors.Load(); n != 1 {
		t.Errorf("%d parse errors counted, want 1", n)
	}
}

// The access log is never opened through a symbolic link, at the start or
// at a reopen.
func TestAccessLogRefusesLink(t *testing.T) {
	dir := t.TempDir()
	victim, link := filepath.Join(dir, "victim"), filepath.Join(dir, "access.log")
	if err := os.WriteFile(victim, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if a, err := OpenAccessLog(link); err == nil {
		unix.Close(a.fd)
		t.Fatal("opened the access log through a symbolic link")
	}
	os.Remove(link)
	a, err := OpenAccessLog(link)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a.fd)
	os.Rename(link, link+".1")
	os.Symlink(victim, link)
	if err := a.Reopen(); err == nil {
		t.Error("reopened the access log through a symbolic link")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep\n" {
		t.Errorf("the link's target changed: %q", b)
	}
}

// followHead finds the final head however the handler's writes cut the
// response: every split into three writes of each case is checked against
// the head found in the whole response at once.
func TestFollowHead(t *testing.T) {
	// want: the body's size, or -1 where no final head ends.
	cases := []struct {
		raw  string
		want int
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 5},
		{"HTTP/1.0 200 OK\r\n\r\nbody until close", 16},
		{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 2},
		{"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 0},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nframes", 6},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 13},
		{"HTTP/1.1 200 OK\r\nX: a\r\r\n\r\nb", 1},            // a lone CR, then the blank line
		{"HTTP/1.1 200 OK\r\nX: a\r\n\r\r\n\r\nb", 1},        // the blank line after the CR that broke one
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", -1},     // the head never ends
		{"HTTP/1.1 100 Continue\r\n\r\n", -1},                // an interim head alone
		{"HTTP/1.1 200 OK\n\nbare LFs end no head here", -1}, // the handler's bug, not ours
		{"", -1},
	}
	s := &session{alog: &logBuf{}}
	size := func(parts ...string) int {
		var w Response
		w.begin(s, nil, nil)
		for _, p := range parts {
			w.WriteRaw([]byte(p))
		}
		if !w.count.headDone {
			return -1
		}
		return w.count.rawBodyLen()
	}
	for _, c := range cases {
		for i := 0; i <= len(c.raw); i++ {
			for j := i; j <= len(c.raw); j++ {
				if got := size(c.raw[:i], c.raw[i:j], c.raw[j:]); got != c.want {
					t.Fatalf("%q written as %q %q %q: body %d, want %d", c.raw, c.raw[:i], c.raw[i:j], c.raw[j:], got, c.want)
				}
			}
		}
		bytewise := make([]string, len(c.raw))
		for i := range c.raw {
			bytewise[i] = c.raw[i : i+1]
		}
		if got := size(bytewise...); got != c.want {
			t.Errorf("%q written a byte at a time: body %d, want %d", c.raw, got, c.want)
		}
	}
	// Without an access log nothing is followed.
	var w Response
	w.begin(&session{}, nil, nil)
	w.WriteRaw([]byte(cases[0].raw))
	if w.count.headDone {
		t.Error("the head was followed without an access log")
	}
}

// A Flush that fails drops what the client did not take, and the log
// counts only what it took.
func TestRawBodyLenAfterFailedFlush(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	var w Response
	w.begin(&session{alog: &logBuf{}, st: new(ipc.Cell)}, &conn{fd: fds[0]}, nil)
	w.WriteRaw([]byte("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[1]) // the client goes: the next write fails with EPIPE
	w.WriteRaw([]byte("world"))
	if err := w.Flush(); err == nil {
		t.Fatal("Flush to a closed peer succeeded")
	}
	if got := w.count.rawBodyLen(); got != 5 {
		t.Errorf("body logged as %d bytes, want the 5 sent", got)
	}
}
