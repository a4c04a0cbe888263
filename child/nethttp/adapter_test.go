package nethttp_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/child/nethttp"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	log.SetOutput(io.Discard) // the adapter logs where net/http does; tests that look capture it
	os.Exit(m.Run())
}

// captureLog collects what the adapter logs during a test.
func captureLog(t *testing.T) *syncBuffer {
	var b syncBuffer
	log.SetOutput(&b)
	t.Cleanup(func() { log.SetOutput(io.Discard) })
	return &b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

// A panic is logged with its stack and answered 500 with Connection:
// close; the child serves the next connection.
func TestPanicAnswers500(t *testing.T) {
	logs := captureLog(t)
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			w.Header().Set("X-Lost", "1")
			io.WriteString(w, "partial, never sent")
			panic("boom")
		}
		io.WriteString(w, "fine")
	})))
	nc := lc.dial(t)
	io.WriteString(nc, get("/boom"))
	br := bufio.NewReader(nc)
	resp, body := readResp(t, br, "GET")
	if resp.StatusCode != 500 || !resp.Close || body != "Internal Server Error\n" || resp.Header.Get("X-Lost") != "" {
		t.Errorf("status %d close %v header %v body %q", resp.StatusCode, resp.Close, resp.Header, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the 500: %v, want EOF", err)
	}
	if l := logs.String(); !strings.Contains(l, "http: panic serving 127.0.0.1:") || !strings.Contains(l, "boom") || !strings.Contains(l, "adapter_test.go") {
		t.Errorf("log: %q", l)
	}
	nc2 := lc.dial(t)
	io.WriteString(nc2, get("/"))
	if _, body := readResp(t, bufio.NewReader(nc2), "GET"); body != "fine" {
		t.Errorf("after the panic: %q", body)
	}
}

// A panic once the response is on its way cannot become a 500: the
// connection closes after what was sent, and the client sees it cut.
func TestPanicAfterFlushCutsTheResponse(t *testing.T) {
	captureLog(t)
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "streamed")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})))
	nc := lc.dial(t)
	io.WriteString(nc, get("/"))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if string(b) != "streamed" || err != io.ErrUnexpectedEOF {
		t.Errorf("body %q, err %v; want the flushed part, then a cut", b, err)
	}
}

// RemoteAddr is the client's address as net/http gives it.
func TestRemoteAddr(t *testing.T) {
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	})))
	nc := lc.dial(t)
	io.WriteString(nc, get("/")+get("/"))
	br := bufio.NewReader(nc)
	for i := 0; i < 2; i++ {
		if _, body := readResp(t, br, "GET"); body != nc.LocalAddr().String() {
			t.Errorf("RemoteAddr %q, want %q", body, nc.LocalAddr())
		}
	}
}

// A flushed event reaches the client while the handler still runs.
func TestServerSentEventsStream(t *testing.T) {
	next := make(chan struct{})
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		for i := 0; i < 3; i++ {
			io.WriteString(w, "data: tick\n\n")
			w.(http.Flusher).Flush()
			<-next
		}
	})))
	nc := lc.dial(t)
	io.WriteString(nc, get("/events"))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Content-Type") != "text/event-stream" || len(resp.TransferEncoding) != 1 {
		t.Fatalf("header %v, TE %v", resp.Header, resp.TransferEncoding)
	}
	ev := make([]byte, len("data: tick\n\n"))
	for i := 0; i < 3; i++ {
		if _, err := io.ReadFull(resp.Body, ev); err != nil || string(ev) != "data: tick\n\n" {
			t.Fatalf("event %d: %q %v", i, ev, err)
		}
		next <- struct{}{}
	}
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Errorf("end of stream: %q %v", rest, err)
	}
	// The connection is still good for the next request.
	io.WriteString(nc, get("/events"))
	go func() {
		for i := 0; i < 3; i++ {
			next <- struct{}{}
		}
	}()
	if _, body := readResp(t, br, "GET"); body != strings.Repeat("data: tick\n\n", 3) {
		t.Errorf("second stream: %q", body)
	}
}

// waitCtx is a handler that streams (or not) and then waits for its
// context; it reports the context's error.
func waitCtx(flush bool, started chan<- struct{}, errs chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if flush {
			io.WriteString(w, "data: hello\n\n")
			w.(http.Flusher).Flush()
		}
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			errs <- r.Context().Err()
		case <-time.After(5 * time.Second):
			errs <- nil
		}
	})
}

func wantCanceled(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if err != context.Canceled {
			t.Errorf("%s: context error %v, want Canceled", what, err)
		}
	case <-time.After(8 * time.Second):
		t.Fatalf("%s: handler did not return", what)
	}
}

// A handler's context is cancelled when the client goes away, when the
// child drains while the handler streams, and on a fast stop.
func TestContextCancelled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream bool   // the handler flushes an event before it waits
		in     string // what the client sends; the first request waits
		// cancel does what must cancel the waiting handler.
		cancel func(t *testing.T, lc *liveChild, nc net.Conn)
		// after checks what the client and the child see once it has.
		after func(t *testing.T, lc *liveChild, nc net.Conn)
	}{
		{name: "client closed", in: get("/wait"), cancel: func(t *testing.T, lc *liveChild, nc net.Conn) {
			nc.Close()
		}},
		// A client that half-closes after pipelining a request behind the one
		// in progress has still gone away, as net/http sees it.
		{name: "half-closed", in: get("/wait") + get("/next"), cancel: func(t *testing.T, lc *liveChild, nc net.Conn) {
			nc.(*net.TCPConn).CloseWrite()
		}},
		// A drain (reload, graceful stop) cancels a stream: it ends properly
		// and the child then closes the connection (its head went out before
		// the drain, so it could not say Connection: close).
		{name: "drain", stream: true, in: get("/events"), cancel: func(t *testing.T, lc *liveChild, nc net.Conn) {
			lc.send(t, ipc.CmdDrain)
		}, after: func(t *testing.T, lc *liveChild, nc net.Conn) {
			br := bufio.NewReader(nc)
			if _, body := readResp(t, br, "GET"); body != "data: hello\n\n" {
				t.Errorf("stream body %q", body)
			}
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := br.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("after the stream ended: read %d, %v; want the child to close the connection", n, err)
			}
		}},
		// A fast stop cancels every waiting handler, so that the child can exit.
		{name: "stop", in: get("/wait"), cancel: func(t *testing.T, lc *liveChild, nc net.Conn) {
			lc.send(t, ipc.CmdStop)
		}, after: func(t *testing.T, lc *liveChild, nc net.Conn) {
			select {
			case <-lc.done:
			case <-time.After(5 * time.Second):
				t.Fatal("child.Run did not return")
			}
			lc.done <- nil // for the cleanup
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started, errs := make(chan struct{}, 2), make(chan error, 2)
			lc := startChild(t, child.Config{}, nethttp.Handler(waitCtx(tc.stream, started, errs)))
			nc := lc.dial(t)
			io.WriteString(nc, tc.in)
			<-started
			tc.cancel(t, lc, nc)
			wantCanceled(t, errs, tc.name)
			if tc.after != nil {
				tc.after(t, lc, nc)
			}
		})
	}
}

// A request that has not streamed anything runs on through a drain: a
// graceful stop lets it finish.
func TestDrainLetsOrdinaryRequestsFinish(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			io.WriteString(w, "cancelled")
		case <-release:
			io.WriteString(w, "finished")
		}
	})))
	nc := lc.dial(t)
	io.WriteString(nc, get("/slow"))
	<-started
	lc.send(t, ipc.CmdDrain)
	time.Sleep(500 * time.Millisecond) // several watcher ticks
	close(release)
	resp, body := readResp(t, bufio.NewReader(nc), "GET")
	if body != "finished" || !resp.Close {
		t.Errorf("body %q close %v, want finished with Connection: close", body, resp.Close)
	}
}

// Once the master announces a stop (go-away), answers say Connection:
// close, as net/http's do once keep-alives are off.
func TestGoAwaySaysClose(t *testing.T) {
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})))
	lc.send(t, ipc.CmdGoAway) // ahead of the connection on the channel
	nc := lc.dial(t)
	io.WriteString(nc, get("/"))
	br := bufio.NewReader(nc)
	resp, body := readResp(t, br, "GET")
	if body != "ok" || !resp.Close {
		t.Errorf("body %q, close %v", body, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the answer: %v, want EOF", err)
	}
}

// The context is done once the handler has returned, for goroutines that
// kept it (net/http's promise).
func TestContextDoneAfterReturn(t *testing.T) {
	got := make(chan context.Context, 1)
	e := child.NewExchanger(nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Context()
	})))
	e.Exchange(nil, []byte(get("/")))
	ctx := <-got
	select {
	case <-ctx.Done():
	default:
		t.Fatal("context not done after the handler returned")
	}
	if ctx.Err() != context.Canceled {
		t.Errorf("Err %v", ctx.Err())
	}
}

// Expect: 100-continue: the child answers 100 Continue once the header is
// complete, the client sends the body, the handler gets it.
func TestExpectContinue(t *testing.T) {
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "got "+string(b))
	})))
	nc := lc.dial(t)
	io.WriteString(nc, "PUT /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(nc)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100: %q", blank)
	}
	io.WriteString(nc, "hello")
	if _, body := readResp(t, br, "PUT"); body != "got hello" {
		t.Errorf("body %q", body)
	}
}

// With Config.Pool 0 the adapter still gets a pool: a handler that blocks
// holds up only its own connection.
func TestImpliedPool(t *testing.T) {
	block, blocked := make(chan struct{}), make(chan struct{})
	defer close(block)
	lc := startChild(t, child.Config{}, nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			close(blocked)
			<-block
		}
		io.WriteString(w, "ok")
	})))
	slow := lc.dial(t)
	io.WriteString(slow, get("/block"))
	<-blocked // the slow handler holds its goroutine
	fast := lc.dial(t)
	fast.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(fast, get("/"))
	if _, body := readResp(t, bufio.NewReader(fast), "GET"); body != "ok" {
		t.Errorf("body %q", body)
	}
}

// Body reads after the handler returned fail, as net/http's do.
func TestBodyClosedAfterReturn(t *testing.T) {
	got := make(chan io.Reader, 1)
	e := child.NewExchanger(nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Body
	})))
	e.Exchange(nil, []byte(post("/", "secret")))
	if _, err := (<-got).Read(make([]byte, 10)); err != http.ErrBodyReadAfterClose {
		t.Errorf("read after return: %v", err)
	}
}

// Hijacking is refused.
func TestNoHijack(t *testing.T) {
	e := child.NewExchanger(nethttp.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := w.(http.Hijacker); ok {
			io.WriteString(w, "hijacker")
			return
		}
		_, _, err := http.NewResponseController(w).Hijack()
		io.WriteString(w, err.Error())
	})))
	out, _, _ := e.Exchange(nil, []byte(get("/")))
	if !bytes.HasSuffix(out, []byte(http.ErrNotSupported.Error())) {
		t.Errorf("answer %q", out)
	}
}

var helloReq = []byte("GET / HTTP/1.1\r\nHost: localhost:8080\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
	"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\r\n")

func helloExchange(tb testing.TB) func() {
	e := child.NewExchanger(nethttp.Handler(mux()))
	out := make([]byte, 0, 4096)
	return func() {
		var n int
		out, n, _ = e.Exchange(out[:0], helloReq)
		if n != len(helloReq) || !bytes.HasSuffix(out, []byte("Hello World")) {
			tb.Fatalf("consumed %d, answered %q", n, out)
		}
	}
}

// The cost of a request stays small: what is allocated per request is the
// request's own (header map, its strings, URL) and the handler's
// Header().Set. The figure is logged; the bound only catches a regression
// that reuse would have prevented.
func TestAllocsPerRequest(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	run := helloExchange(t)
	run()
	allocs := testing.AllocsPerRun(1000, run)
	t.Logf("%v allocations per keep-alive GET through an http.ServeMux", allocs)
	if allocs > 8 {
		t.Errorf("%v allocations per request, want at most 8", allocs)
	}
}

// cpuTime is the process's CPU time so far: on a shared machine wall time
// per operation says more about the neighbours than about the code.
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchCPU(b *testing.B, run func()) {
	run()
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		run()
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkServeMuxHello: a keep-alive GET through the child's parser, the
// adapter, an http.ServeMux and the child's writer (an Exchanger: no
// sockets, no pool hand-off).
func BenchmarkServeMuxHello(b *testing.B) { benchCPU(b, helloExchange(b)) }

// BenchmarkNativeHello is the same request answered by a child.Handler:
// what the adapter adds is the difference.
func BenchmarkNativeHello(b *testing.B) {
	e := child.NewExchanger(child.HandlerFunc(func(w *child.Response, r *child.Request) {
		w.SetContentType("text/plain")
		w.WriteString("Hello World")
	}))
	out := make([]byte, 0, 4096)
	benchCPU(b, func() {
		var n int
		out, n, _ = e.Exchange(out[:0], helloReq)
		if n != len(helloReq) {
			b.Fatal("not consumed")
		}
	})
}
