package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fdSnapshot is the open fds of each of a set of processes.
type fdSnapshot map[int]map[int]string

func takeFds(t *testing.T, pids []int) fdSnapshot {
	t.Helper()
	snap := fdSnapshot{}
	for _, pid := range pids {
		fds, err := fdTargets(pid)
		if err != nil {
			t.Fatalf("fds of %d: %v", pid, err)
		}
		snap[pid] = fds
	}
	return snap
}

// sameCounts reports whether every process holds as many fds as in base.
func (base fdSnapshot) sameCounts() bool {
	for pid, fds := range base {
		n, err := fdCount(pid)
		if err != nil || n != len(fds) {
			return false
		}
	}
	return true
}

// diff describes what changed since base, process by process.
func (base fdSnapshot) diff(t *testing.T, names map[int]string) string {
	now := takeFds(t, sortedKeys(base))
	var b strings.Builder
	for _, pid := range sortedKeys(base) {
		was, is := base[pid], now[pid]
		if len(was) == len(is) {
			continue
		}
		fmt.Fprintf(&b, "%s (pid %d): %d fds before, %d after\n", names[pid], pid, len(was), len(is))
		for _, fd := range sortedKeys(is) {
			if was[fd] != is[fd] {
				fmt.Fprintf(&b, "\tnew fd %d -> %s\n", fd, is[fd])
			}
		}
		for _, fd := range sortedKeys(was) {
			if _, ok := is[fd]; !ok {
				fmt.Fprintf(&b, "\tgone fd %d -> %s\n", fd, was[fd])
			}
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// TestNoFdLeak passes 1,000 short connections and some keep-alive ones
// through the server and expects the master and every child to end with
// the fds they started with.
func TestNoFdLeak(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	kids := s.waitReady(2)
	pids := append([]int{s.pid}, kidPids(kids)...)
	names := map[int]string{s.pid: "master"}
	for _, k := range kids {
		names[k.pid] = fmt.Sprintf("child slot %d", k.slot)
	}
	base := takeFds(t, pids)

	const parallel, perWorker = 10, 100
	errs := make(chan error, parallel*perWorker+100)
	// The first failure stops every worker: a server that never closes
	// would otherwise cost each of the 1,000 connections its full timeout.
	var failed atomic.Bool
	report := func(err error) {
		failed.Store(true)
		errs <- err
	}
	var wg sync.WaitGroup
	for w := range parallel {
		wg.Go(func() {
			for i := 0; i < perWorker && !failed.Load(); i++ {
				if err := closeRequest(s.addr, w, i); err != nil {
					report(err)
				}
			}
		})
	}
	// Keep-alive connections that the client closes: after some requests,
	// and without any request at all.
	for w := range 5 {
		wg.Go(func() {
			for i := 0; i < 10 && !failed.Load(); i++ {
				if err := keepAliveRequests(s.addr, i%4); err != nil {
					report(fmt.Errorf("keep-alive worker %d connection %d: %v", w, i, err))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 10 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d connections failed", n)
	}

	// A child closes a connection when it reads the client's EOF, which
	// may come a moment after the client is done.
	if !pollFor(5*time.Second, base.sameCounts) {
		t.Fatalf("fds differ from before the connections:\n%s", base.diff(t, names))
	}
	if now := s.children(); len(now) != len(kids) {
		t.Fatalf("children %v after the connections, want %d", now, len(kids))
	}
}

// closeRequest makes one request with Connection: close and reads to EOF.
func closeRequest(addr string, worker, i int) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	cc := &clientConn{Conn: c}
	cc.br = bufio.NewReader(c)
	body := fmt.Sprintf("worker %d request %d", worker, i)
	r, err := cc.roundTrip(fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	if err != nil {
		return fmt.Errorf("worker %d request %d: %v", worker, i, err)
	}
	if r.status != 200 || r.body != body || !r.close {
		return fmt.Errorf("worker %d request %d: status %d close %v body %q", worker, i, r.status, r.close, r.body)
	}
	if rest, err := io.ReadAll(cc.br); err != nil || len(rest) > 0 {
		return fmt.Errorf("worker %d request %d: after the response: %q, %v", worker, i, rest, err)
	}
	return nil
}

// keepAliveRequests makes n requests on one connection, then closes it.
func keepAliveRequests(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	cc := &clientConn{Conn: c, br: bufio.NewReader(c)}
	for i := range n {
		r, err := cc.roundTrip("GET / HTTP/1.1\r\nHost: test\r\n\r\n")
		if err != nil {
			return err
		}
		if r.status != 200 || r.body != helloBody || r.close {
			return fmt.Errorf("request %d: status %d close %v body %q", i, r.status, r.close, r.body)
		}
	}
	return nil
}

// An fd the launcher left open without close-on-exec (a shell redirection,
// a supervisor's socket) stays with the master: no child, which may run as
// another user, inherits it.
func TestInheritedFdsStayWithTheMaster(t *testing.T) {
	t.Parallel()
	secret, err := os.CreateTemp(t.TempDir(), "launcher-secret")
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	// At fd 7: above the fds a child is started with, which would replace
	// anything at 0-4.
	s := startServerWith(t, func(c *exec.Cmd) { c.ExtraFiles = []*os.File{nil, nil, nil, nil, secret} }, "-workers=2")
	s.waitReady(2)
	for _, pid := range s.children() {
		fds, err := fdTargets(pid)
		if err != nil {
			t.Fatal(err)
		}
		for fd, target := range fds {
			if target == secret.Name() {
				t.Errorf("child %d holds the launcher's %s as fd %d", pid, target, fd)
			}
		}
	}
}
