package main

// Hostile request bodies through the real binary: memory that follows the
// bytes that arrived rather than the bytes a header announced, limits that
// no flag value can turn into a crash.

import (
	"bufio"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procpool/procpool/child"
)

// waitAllRead waits until the server side of every connection from the
// client ports peers to port has an empty receive queue: the children have
// read all that was sent. The kernel writes /proc/net/tcp a page per read,
// so an entry can be missed while other tests churn connections: it polls.
func waitAllRead(t *testing.T, port int, peers map[int]bool) {
	t.Helper()
	var pending int
	ok := pollFor(ioTimeout, func() bool {
		table, err := tcpTable(port)
		if err != nil {
			t.Fatal(err)
		}
		read := map[int]bool{}
		for _, e := range table {
			if peers[e.rport] && e.rxQueue == 0 {
				read[e.rport] = true
			}
		}
		pending = len(peers) - len(read)
		return pending == 0
	})
	if !ok {
		t.Fatalf("%d of %d connections still have unread bytes after %v", pending, len(peers), ioTimeout)
	}
}

// waitAllClosed waits until no connection to port is established any more
// on the server side.
func waitAllClosed(t *testing.T, port int) {
	t.Helper()
	ok := pollFor(ioTimeout, func() bool {
		table, err := heldSockets(port)
		if err != nil {
			t.Fatal(err)
		}
		return !slices.ContainsFunc(table, func(e tcpEntry) bool { return e.state == tcpEstablished })
	})
	if !ok {
		t.Fatalf("connections to port %d still open after %v", port, ioTimeout)
	}
}

func dialMany(t *testing.T, s *server, n int) ([]net.Conn, map[int]bool) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	ports := map[int]bool{}
	for range n {
		c, err := net.DialTimeout("tcp", s.addr, ioTimeout)
		if err != nil {
			t.Fatalf("dial %s: %v", s.addr, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
		ports[c.LocalAddr().(*net.TCPAddr).Port] = true
	}
	return conns, ports
}

// TestDeclaredBodyCostsNothing opens 200 connections that each announce a
// 1 MiB body and send none of it: what a child holds for them must follow
// the bytes that came, the headers, not the Content-Length.
func TestDeclaredBodyCostsNothing(t *testing.T) {
	t.Parallel()
	const conns, budget = 200, 8 << 20
	s := startServer(t, "-workers=2")
	kids := kidPids(s.waitReady(2))
	// Every child serves a little first, so its own buffers are counted in
	// the baseline.
	for range 4 {
		c := s.dial(t)
		if r, err := c.roundTrip("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"); err != nil || r.status != 200 {
			t.Fatalf("warm-up echo: %v %v", r, err)
		}
		c.Close()
	}
	before := totalRSS(t, kids)

	// Two waves: a buffer the first wave left to the collector and the
	// second reuses is zeroed, and so resident, however little of it was
	// written.
	var cs []net.Conn
	for wave := range 2 {
		if wave > 0 {
			for _, c := range cs {
				c.Close()
			}
			waitAllClosed(t, s.port)
		}
		var ports map[int]bool
		cs, ports = dialMany(t, s, conns)
		for _, c := range cs {
			if _, err := c.Write([]byte("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
		}
		waitAllRead(t, s.port, ports)
	}
	after := totalRSS(t, kids)
	t.Logf("children's RSS %.1f MiB before, %.1f MiB with %d connections each declaring a 1 MiB body (+%.2f MiB)",
		float64(before)/(1<<20), float64(after)/(1<<20), conns, float64(after-before)/(1<<20))
	if after-before >= budget {
		t.Errorf("children's RSS grew by %.1f MiB for %d connections that sent only headers, want under %d MiB",
			float64(after-before)/(1<<20), conns, budget>>20)
	}
	// They are still waiting for their bodies, and a body that comes is
	// echoed whole.
	body := strings.Repeat("b", 1<<20)
	if _, err := cs[0].Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	cs[0].SetDeadline(time.Now().Add(ioTimeout))
	r, err := (&clientConn{Conn: cs[0], br: bufio.NewReader(cs[0])}).readResponse()
	if err != nil {
		t.Fatalf("echo of the announced body: %v", err)
	}
	if r.status != 200 || r.body != body {
		t.Fatalf("echo of the announced body: status %d, %d bytes, want 200 and %d", r.status, len(r.body), len(body))
	}
}

// TestHugeBodyLimit: no -max-body value can make a child allocate what a
// request only announces. A value beyond what a child can hold is refused
// at start, naming the flag; at the largest accepted one, a request that
// announces that much keeps its connection waiting, one more byte is 413,
// and the child goes on serving everyone else.
func TestHugeBodyLimit(t *testing.T) {
	t.Parallel()
	code, stderr := runToExit(t, "-listen=127.0.0.1:0", "-max-body=1000000000000000")
	if code != 2 || !strings.Contains(stderr, "-max-body") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("-max-body=1000000000000000: exit status %d, stderr %q; want 2 and one line naming -max-body", code, stderr)
	}
	for _, flag := range []string{"max-request-line", "max-header-bytes", "max-headers"} {
		arg := "-" + flag + "=10000000000"
		if code, stderr := runToExit(t, "-listen=127.0.0.1:0", arg); code != 2 || !strings.Contains(stderr, "-"+flag) {
			t.Errorf("%s: exit status %d, stderr %q; want 2 and the flag named", arg, code, stderr)
		}
	}

	max := child.MaxLimits.MaxBody
	s := startServer(t, "-workers=1", "-max-body="+strconv.FormatInt(max, 10))
	kids := kidPids(s.waitReady(1))
	head := func(n int64) string {
		return "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + strconv.FormatInt(n, 10) + "\r\n\r\n"
	}
	waiting := s.dial(t)
	if _, err := waiting.Write([]byte(head(max) + "some of it")); err != nil {
		t.Fatal(err)
	}
	over := s.dial(t)
	r, err := over.roundTrip(head(max + 1))
	if err != nil || r.status != 413 {
		t.Fatalf("Content-Length one over -max-body: %v %v, want 413", r, err)
	}
	for range 3 {
		if r := s.get(t, "/"); r.status != 200 {
			t.Fatalf("GET / beside a connection announcing %d bytes: %d", max, r.status)
		}
	}
	// The announcing connection is still open and unanswered.
	waiting.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := waiting.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
		t.Errorf("connection announcing %d bytes: read %d, %v; want it waiting for the body", max, n, err)
	}
	if now := s.children(); len(now) != 1 || now[0] != kids[0] {
		t.Errorf("children %v, were %v", now, kids)
	}
	for _, line := range s.log.snapshot() {
		if strings.Contains(line, "exited") || strings.Contains(line, "panic") {
			t.Errorf("master log: %s", line)
		}
	}
}

// TestChunkedTrickle sends 1 MiB of 1-byte chunks in 1 KiB segments, a
// short pause after each so that the child reads them one at a time, and
// checks the echo. It logs the child's CPU time for the request (run with
// -v to see it): no bound on it is asserted here; the decoder's work is
// checked in the child's tests, where it can be counted.
func TestChunkedTrickle(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1")
	kid := kidPids(s.waitReady(1))[0]
	var body, req []byte
	req = append(req, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"...)
	for i := 0; len(req) < 1<<20; i++ {
		c := "abcdefghijklmnopqrstuvwxyz"[i%26]
		body = append(body, c)
		req = append(req, '1', '\r', '\n', c, '\r', '\n')
	}
	req = append(req, "0\r\n\r\n"...)
	c := s.dial(t)
	c.SetDeadline(time.Now().Add(time.Minute))
	before, err := cpuTime(kid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < len(req); i += 1 << 10 {
		if _, err := c.Write(req[i:min(i+1<<10, len(req))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	r, err := c.readResponse()
	if err != nil {
		t.Fatal(err)
	}
	after, err := cpuTime(kid)
	if err != nil {
		t.Fatal(err)
	}
	cpu := after - before
	if r.status != 200 || r.body != string(body) {
		t.Fatalf("echo: status %d, %d bytes, want 200 and the %d sent", r.status, len(r.body), len(body))
	}
	t.Logf("child CPU %v for %d bytes of 1-byte chunks (%d of body) in %d segments of 1 KiB over %v",
		cpu.Round(time.Millisecond), len(req), len(body), (len(req)+1023)>>10, time.Since(start).Round(time.Millisecond))
}
