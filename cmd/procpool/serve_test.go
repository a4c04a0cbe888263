package main

// HTTP as clients see it: keep-alive under a real client, pipelining, and
// malformed requests that must not disturb anyone else.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const helloBody = "Hello World"

// TestKeepAliveClient sends 2,000 requests from net/http's client, 50
// goroutines with 40 requests each over at most 50 connections, and checks
// every answer and that the server closed no connection.
func TestKeepAliveClient(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	s.waitReady(2)

	const goroutines, perGoroutine = 50, 40
	var (
		dials atomic.Int64
		ends  endings // how the connections ended, should there be too many
	)
	tr := &http.Transport{
		MaxIdleConnsPerHost: goroutines,
		MaxConnsPerHost:     goroutines,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				ends.add("dial: " + errClass(err))
				return nil, err
			}
			return &endingConn{Conn: c, ends: &ends}, nil
		},
	}
	t.Cleanup(tr.CloseIdleConnections) // before the server's stop, which runs later
	client := &http.Client{Transport: tr, Timeout: ioTimeout}
	url := "http://" + s.addr

	var (
		mu   sync.Mutex
		errs []string
		ok   atomic.Int64
	)
	fail := func(format string, a ...any) {
		mu.Lock()
		errs = append(errs, fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	check := func(req *http.Request, want, wantType string) {
		resp, err := client.Do(req)
		if err != nil {
			fail("%s %s: %v", req.Method, req.URL.Path, err)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			fail("%s %s: reading body: %v", req.Method, req.URL.Path, err)
		case resp.StatusCode != 200:
			fail("%s %s: status %d", req.Method, req.URL.Path, resp.StatusCode)
		case string(body) != want:
			fail("%s %s: body %q, want %q", req.Method, req.URL.Path, body, want)
		case resp.Close:
			fail("%s %s: the server closed a keep-alive connection (Connection: close)", req.Method, req.URL.Path)
		case wantType != "" && resp.Header.Get("Content-Type") != wantType:
			fail("%s %s: Content-Type %q, want %q", req.Method, req.URL.Path, resp.Header.Get("Content-Type"), wantType)
		default:
			ok.Add(1)
		}
	}

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				if (g+i)%2 == 0 {
					req, _ := http.NewRequest("GET", url+"/", nil)
					check(req, helloBody, "text/plain")
					continue
				}
				body := fmt.Sprintf("goroutine %02d request %02d %s", g, i, strings.Repeat("x", (g*perGoroutine+i)%300))
				req, _ := http.NewRequest("POST", url+"/echo", strings.NewReader(body))
				check(req, body, "")
			}
		})
	}
	wg.Wait()

	for i, e := range errs {
		if i == 10 {
			t.Errorf("... and %d more errors", len(errs)-10)
			break
		}
		t.Error(e)
	}
	if got := ok.Load(); got != goroutines*perGoroutine {
		t.Errorf("%d of %d requests answered correctly", got, goroutines*perGoroutine)
	}
	// The server closed none of them. Dials are not the measure: net/http's
	// Transport itself drops a connection whose request write it has not
	// seen finish within 50 ms of the answer (maxWriteWaitBeforeConnReuse),
	// which a loaded machine makes happen now and then.
	for why, n := range ends.list() {
		if why != "client close" {
			t.Errorf("%d of %d connections ended by %s: keep-alive connections were not kept", n, dials.Load(), why)
		}
	}
}

// TestPipelining writes 100 requests at once on one connection and expects
// 100 answers in the same order.
func TestPipelining(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	s.waitReady(2)

	const n = 100
	type expect struct {
		status int
		body   string
	}
	var (
		reqs strings.Builder
		want []expect
	)
	for i := range n {
		switch i % 4 {
		case 3:
			fmt.Fprintf(&reqs, "GET /missing/%03d HTTP/1.1\r\nHost: test\r\n\r\n", i)
			want = append(want, expect{404, ""})
		case 2:
			fmt.Fprintf(&reqs, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
			want = append(want, expect{200, helloBody})
		default:
			body := fmt.Sprintf("request %03d %s", i, strings.Repeat("p", i))
			fmt.Fprintf(&reqs, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			want = append(want, expect{200, body})
		}
	}

	c := s.dial(t)
	if _, err := io.WriteString(c, reqs.String()); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		r, err := c.readResponse()
		if err != nil {
			t.Fatalf("response %d of %d: %v", i, n, err)
		}
		if r.status != w.status || (w.body != "" && r.body != w.body) {
			t.Fatalf("response %d: status %d body %q, want status %d body %q", i, r.status, r.body, w.status, w.body)
		}
		if r.close {
			t.Fatalf("response %d closes the connection", i)
		}
	}
	// The connection is still good for more.
	r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: test\r\n\r\n")
	if err != nil || r.status != 200 || r.body != helloBody {
		t.Fatalf("request after the pipeline: %+v, %v", r, err)
	}
}

// TestMalformedRequest sends bad requests: each gets 400 and Connection:
// close, the server closes that connection, and a keep-alive connection to
// the same child goes on working throughout.
func TestMalformedRequest(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1") // one child: the good and bad connections share it
	s.waitReady(1)

	good := s.dial(t)
	ping := func(when string) {
		t.Helper()
		good.SetDeadline(time.Now().Add(ioTimeout))
		r, err := good.roundTrip("GET / HTTP/1.1\r\nHost: test\r\n\r\n")
		if err != nil || r.status != 200 || r.body != helloBody || r.close {
			t.Fatalf("keep-alive request %s: %+v, %v", when, r, err)
		}
	}
	ping("before any bad request")

	bad := []struct{ name, raw string }{
		{"header without colon", "GET / HTTP/1.1\r\nHost: test\r\nthis is not a header\r\n\r\n"},
		{"garbage request line", "NOT HTTP AT ALL\r\n\r\n"},
		{"bad content length", "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: twelve\r\n\r\n"},
		{"space before colon", "GET / HTTP/1.1\r\nHost : test\r\n\r\n"},
	}
	for _, b := range bad {
		c := s.dial(t)
		r, err := c.roundTrip(b.raw)
		if err != nil {
			t.Fatalf("%s: no response: %v", b.name, err)
		}
		if r.status != 400 {
			t.Errorf("%s: status %d, want 400", b.name, r.status)
		}
		if !r.close {
			t.Errorf("%s: response lacks Connection: close (header %v)", b.name, r.header)
		}
		// While the server lingers on the bad connection, the good one works.
		ping("while a bad connection is open: " + b.name)
		if err := c.waitClosed(ioTimeout); err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
		ping("after " + b.name)
	}
	if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
		t.Fatalf("new connection after the bad requests: %+v", r)
	}
}

// The built-in routes as the README lists them.
func TestBuiltinRoutes(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1")
	s.waitReady(1)
	for _, tc := range []struct {
		req, body string
		status    int
	}{
		{"GET / HTTP/1.1\r\nHost: t\r\n\r\n", helloBody, 200},
		{"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", helloBody, 200}, // a body is ignored
		{"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", "abc", 200},
		{"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", "", 200},
		{"GET /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n", "xyz", 200},
		{"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", "Not Found\n", 404},
	} {
		c := s.dial(t)
		r, err := c.roundTrip(tc.req)
		if err != nil || r.status != tc.status || r.body != tc.body {
			t.Errorf("%q: %+v %v; want %d %q", tc.req, r, err, tc.status, tc.body)
		}
		c.Close()
	}
}

// With -defer-accept a client that sends its request, at once or after a
// pause, is served as usual.
func TestDeferAcceptServes(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-defer-accept=1s")
	s.waitReady(2)
	if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
		t.Fatalf("GET /: %+v", r)
	}
	c := s.dial(t)
	time.Sleep(200 * time.Millisecond) // the request comes later than the connect
	if r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil || r.status != 200 {
		t.Fatalf("GET / sent 200 ms after the connect: %+v %v", r, err)
	}
}
