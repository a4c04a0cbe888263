package main

// Hand-back against the real binary: a reload retires the children, which
// give their keep-alive connections back to the master instead of closing
// them; the clients go on on the same connections, and a request split
// across the moment of hand-back is answered once, in order.

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reloadAndWait sends SIGHUP and waits until every child of the generation
// before it has exited.
func reloadAndWait(t *testing.T, s *server, gen int) {
	t.Helper()
	syscall.Kill(s.pid, syscall.SIGHUP)
	waitLog(t, s, fmt.Sprintf(`msg="reload done" gen=%d`, gen+1))
	if !s.log.waitFor(ioTimeout, s.exited, func(lines []string) bool {
		live := map[int]bool{}
		for _, k := range parseKids(lines, reSpawned) {
			if k.gen == gen {
				live[k.pid] = true
			}
		}
		for _, l := range lines {
			if strings.Contains(l, `msg="child exited"`) {
				for pid := range live {
					if strings.Contains(l, fmt.Sprintf("pid=%d ", pid)) {
						delete(live, pid)
					}
				}
			}
		}
		return len(live) == 0
	}) {
		t.Fatalf("generation %d still running after the reload; log:\n%s", gen, s.log)
	}
}

func TestReloadKeepsConnections(t *testing.T) {
	for _, mode := range []string{"fdpass", "reuseport"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, "-workers=2", "-affinity=false", "-mode="+mode)
			s.waitReady(2)
			const n = 20
			conns := make([]*clientConn, n)
			for i := range conns {
				conns[i] = s.dial(t)
			}
			ask := func(round int) {
				t.Helper()
				for i, c := range conns {
					path := fmt.Sprintf("/echo?r=%d&c=%d", round, i)
					body := fmt.Sprintf("round %d conn %d", round, i)
					r, err := c.roundTrip(fmt.Sprintf("POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body))
					if err != nil {
						t.Fatalf("round %d, connection %d: %v (the server closed a keep-alive connection)", round, i, err)
					}
					if r.status != 200 || r.body != body || r.close {
						t.Fatalf("round %d, connection %d: status %d body %q close %v", round, i, r.status, r.body, r.close)
					}
				}
			}
			ask(0)
			for gen := range 3 {
				reloadAndWait(t, s, gen)
				ask(gen + 1)
			}
		})
	}
}

// Half a request is read by a child that is then retired: the bytes go to the
// next child with the connection, the rest completes them, and the pipelined
// requests are answered once each, in order.
func TestHandBackSplitRequest(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-affinity=false")
	s.waitReady(1)
	c := s.dial(t)
	if r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil || r.status != 200 {
		t.Fatalf("first request: %v %v", r, err)
	}
	first := "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none" + "POST /echo HTTP/1.1\r\nHo"
	if _, err := io.WriteString(c, first); err != nil {
		t.Fatal(err)
	}
	r, err := c.readResponse()
	if err != nil || r.body != "one" {
		t.Fatalf("pipelined request before the reload: %+v %v", r, err)
	}
	reloadAndWait(t, s, 0)
	if _, err := io.WriteString(c, "st: t\r\nContent-Length: 3\r\n\r\ntwoGET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nthree"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"two", "three"} {
		r, err := c.readResponse()
		if err != nil || r.status != 200 || r.body != want {
			t.Fatalf("after the hand-back: want %q, got %+v %v", want, r, err)
		}
	}
}

// -max-requests recycles children under keep-alive load: their pids change,
// each replacement starts before its child goes, and not one connection is
// closed or request lost.
func TestRecycleMaxRequests(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-affinity=false", "-max-requests=200", "-admin=127.0.0.1:0")
	admin := adminAddr(t, s)
	first := kidPids(s.waitReady(2))
	conns := make([]*clientConn, 8)
	for i := range conns {
		conns[i] = s.dial(t)
	}
	for round := range 150 { // 1,200 requests: each child passes its limit
		for i, c := range conns {
			r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
			if err != nil || r.status != 200 || r.close {
				t.Fatalf("round %d, connection %d: %+v %v", round, i, r, err)
			}
		}
	}
	for _, pid := range first {
		waitLog(t, s, fmt.Sprintf(`msg="child recycled" pid=%d`, pid))
	}
	for _, c := range getStatus(t, admin).Children {
		if slices.Contains(first, c.Pid) || c.State != "ready" {
			continue // on its way out, or a replacement not yet ready (it says why once it is)
		}
		if c.Replaces != "max-requests" {
			t.Errorf("child %d in /status replaces %q, want max-requests", c.Pid, c.Replaces)
		}
	}
	for round := range 10 { // and the connections live on in the replacements
		for i, c := range conns {
			if r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil || r.status != 200 || r.close {
				t.Fatalf("after the recycling, round %d, connection %d: %+v %v", round, i, r, err)
			}
		}
	}
	if !strings.Contains(s.log.String(), "recycling child: starting its replacement") {
		t.Errorf("no replacement was started first; log:\n%s", s.log)
	}
}

// -max-rss recycles a child whose handler leaks.
func TestRecycleMaxRSS(t *testing.T) {
	t.Parallel()
	s := sleepServer(t, "-workers=1", "-affinity=false", "-max-rss=64M", "-recycle-jitter=0")
	kid := kidPids(s.waitReady(1))[0]
	c := s.dial(t)
	for range 10 { // 80 MiB
		if r, err := c.roundTrip("GET /leak/8192 HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil || r.status != 200 {
			t.Fatalf("leak: %+v %v", r, err)
		}
	}
	waitLog(t, s, fmt.Sprintf(`msg="child recycled" pid=%d slot=0 reason=max-rss`, kid))
	// The connection lives on in the replacement.
	if r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil || r.status != 200 {
		t.Fatalf("after the recycling: %+v %v", r, err)
	}
}

// A client trickling a body into a retired child cannot keep it alive: at
// -grace the child closes the connection and exits (the client would need
// minutes to finish); until then the child lets it go on.
func TestRetiredChildGraceCutsTrickle(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-affinity=false", "-grace=2s", "-body-timeout=30s")
	old := kidPids(s.waitReady(1))[0]
	c := s.dial(t)
	if _, err := io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a byte every 200 ms: 1,000 bytes take over three minutes
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
				if _, err := io.WriteString(c, "x"); err != nil {
					return
				}
			}
		}
	}()
	syscall.Kill(s.pid, syscall.SIGHUP)
	waitLog(t, s, `msg="reload done"`)
	time.Sleep(500 * time.Millisecond) // well inside the grace period
	if !pidAlive(old) {
		t.Fatalf("the retired child %d left before its grace period was over; log:\n%s", old, s.log)
	}
	waitLog(t, s, fmt.Sprintf(`msg="child exited" pid=%d`, old))
	if strings.Contains(s.log.String(), "killing a retired child") {
		t.Errorf("the retired child had to be killed; log:\n%s", s.log)
	}
	if err := c.waitClosed(ioTimeout); err != nil {
		t.Errorf("trickling connection after the retired child's grace: %v", err)
	}
}

// An upgrade moves the keep-alive connections too: the old children hand
// them back, the old master forwards them to the new one, and the clients
// go on on the same connections. The new master serves the admin listener
// it inherited, on the same address.
func TestUpgradeKeepsConnections(t *testing.T) {
	t.Parallel()
	bin, pidfile := installed(t)
	s := startServerWith(t, useBin(bin), "-workers=2", "-affinity=false", "-pidfile="+pidfile, "-admin=127.0.0.1:0")
	admin := adminAddr(t, s)
	s.waitReady(2)
	adopted := adoptedCleanup(t, s, pidfile)
	conns := make([]*clientConn, 20)
	for i := range conns {
		conns[i] = s.dial(t)
	}
	ask := func(what string) {
		t.Helper()
		for i, c := range conns {
			r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
			if err != nil || r.status != 200 || r.close {
				t.Fatalf("%s, connection %d: %+v %v (the server closed a keep-alive connection)", what, i, r, err)
			}
		}
	}
	ask("before the upgrade")

	if code, stderr := runToExit(t, "-s", "upgrade", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s upgrade exited %d: %s", code, stderr)
	}
	newPid := 0
	if !pollFor(15*time.Second, func() bool {
		if pid := pidfilePid(pidfile); newPid == 0 && pid != 0 && pid != s.pid {
			if id, err := identify(pid); err == nil {
				newPid, *adopted = pid, id
			}
		}
		return newPid != 0 && s.hasExited()
	}) {
		t.Fatalf("upgrade not complete: pidfile holds %d, old master exited: %v; log:\n%s", pidfilePid(pidfile), s.hasExited(), s.log)
	}
	ask("after the upgrade, the old master gone")
	if st := getStatus(t, admin); st.MasterPid != newPid {
		t.Errorf("admin %s after the upgrade answers for master %d, want the new %d", admin, st.MasterPid, newPid)
	}
	if !strings.Contains(s.log.String(), `msg="child exited"`) || strings.Contains(s.log.String(), "closing those left") {
		t.Errorf("old master's log:\n%s", s.log)
	}
}
