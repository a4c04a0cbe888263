package child

import (
	"bufio"
	"net"
	"testing"

	"github.com/procpool/procpool/child/internal/childtest"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// earlyReads reads new connections at once while at least half of those
// reads find a request, arms them first otherwise, and keeps probing.
func TestEarlyReadsDecide(t *testing.T) {
	var e earlyReads
	for i := 0; i < earlyWindow; i++ {
		if !e.try() {
			t.Fatalf("connection %d armed first before any early read missed", i)
		}
		e.note(i%2 == 0) // half find their request: still worth it
	}
	if e.armFirst {
		t.Fatal("armed first after half of the early reads found a request")
	}
	for i := 0; i < earlyWindow; i++ {
		e.try()
		e.note(i%4 == 0) // three in four find nothing
	}
	if !e.armFirst {
		t.Fatal("still reading at once after three in four early reads found nothing")
	}
	probes := 0
	for i := 0; i < earlyProbe*earlyWindow; i++ {
		if e.try() {
			probes++
			e.note(true)
		}
	}
	if probes != earlyWindow || e.armFirst {
		t.Fatalf("%d probes in %d new connections, armFirst %v; want %d probes and back to reading at once",
			probes, earlyProbe*earlyWindow, e.armFirst, earlyWindow)
	}
}

// New connections are answered whichever way the loop takes them: clients
// that send after the connection reached the child (early reads find
// nothing: the loop turns to arming first), then clients whose request was
// there before (it turns back).
func TestLoopServesNewConnectionsEitherOrder(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	const n = 3 * earlyWindow
	for i := 0; i < n; i++ {
		c := tc.dial(t)
		if r := c.roundTrip(t, "/late"); r.status != 200 || string(r.body) != "/late" {
			t.Fatalf("connection %d, request sent after the hand-off: status %d body %q", i, r.status, r.body)
		}
		c.Close()
	}
	for i := 0; i < earlyProbe*n; i++ {
		nc, fd := tc.ln.Dial(t, &net.Dialer{})
		c := &client{Conn: nc, br: bufio.NewReader(nc)}
		c.send(t, get("/early"))
		tc.pass(t, fd)
		if r := c.read(t); r.status != 200 || string(r.body) != "/early" {
			t.Fatalf("connection %d, request sent before the hand-off: status %d body %q", i, r.status, r.body)
		}
		c.Close()
	}
}

// Every fresh connection the loop takes has TCP_NODELAY: set by noDelay,
// or inherited from a listener that has it, in which case noDelay leaves
// fresh connections alone, as it does those of a Unix-socket listener,
// which have no such option.
func TestNoDelay(t *testing.T) {
	nodelay := func(fd int) int {
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	accepted := func(ln *childtest.Listener) int {
		_, fd := ln.Dial(t, &net.Dialer{})
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	plain := childtest.Listen(t)
	defer plain.Close()
	var l loop
	for i := 0; i < 3; i++ {
		fd := accepted(plain)
		l.noDelay(fd)
		if nodelay(fd) == 0 || l.freshNoDelay != -1 {
			t.Fatalf("fresh connection %d from a listener without TCP_NODELAY: nodelay %d, freshNoDelay %d", i, nodelay(fd), l.freshNoDelay)
		}
	}
	inherits := childtest.Listen(t)
	defer inherits.Close()
	if err := unix.SetsockoptInt(inherits.Fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		t.Fatal(err)
	}
	l = loop{}
	for i := 0; i < 3; i++ {
		fd := accepted(inherits)
		l.noDelay(fd)
		if nodelay(fd) == 0 || l.freshNoDelay != 1 {
			t.Fatalf("fresh connection %d from a listener with TCP_NODELAY: nodelay %d, freshNoDelay %d", i, nodelay(fd), l.freshNoDelay)
		}
	}
	a, b, err := ipc.Pair() // a Unix socket, as from -listen unix:PATH
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	defer unix.Close(b)
	l = loop{}
	l.noDelay(a)
	if l.freshNoDelay != 1 {
		t.Fatalf("a Unix-socket connection: freshNoDelay %d, want 1 (nothing to set, nothing to ask again)", l.freshNoDelay)
	}
}
