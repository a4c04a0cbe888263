package master

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The master accepts while some child has room and leaves connections in
// the kernel's backlog while none has; a child closing one makes room.
func TestAcceptBackpressure(t *testing.T) {
	m, _, kids := newFakeMaster(t, 2, Config{MaxConns: 2, Stall: -1})
	lfd, err := Listen("127.0.0.1:0", 64, false)
	if err != nil {
		t.Fatal(err)
	}
	m.lfd = lfd
	t.Cleanup(m.closeListener)
	addr, err := LocalAddr(lfd)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(n int) {
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
	}
	now := time.Now()
	m.updateAccepting(now)
	if !m.accepting {
		t.Fatal("not accepting with room in every child")
	}
	dial(5)
	m.accept()
	if len(m.queue) != 5 {
		t.Fatalf("accepted %d of 5", len(m.queue))
	}
	m.dispatch()
	for _, k := range kids {
		n, _ := k.take(t)
		m.accepted(k, uint64(n))
	}
	if len(m.queue) != 1 {
		t.Fatalf("%d queued with every child at -max-conns 2, want 1", len(m.queue))
	}
	m.updateAccepting(now)
	if m.accepting || !m.allFull {
		t.Fatalf("accepting %v, all full %v with every child at its limit", m.accepting, m.allFull)
	}
	m.stats.Cell(kids[1].cell).Closed.Add(1)
	m.dispatch()
	m.updateAccepting(now)
	if n, _ := kids[1].take(t); n != 1 || m.accepting {
		t.Fatalf("child 1 got %d of the queued one; accepting %v with no room left", n, m.accepting)
	}
	m.stats.Cell(kids[0].cell).Closed.Add(1)
	m.updateAccepting(now)
	if !m.accepting || m.allFull {
		t.Fatal("not accepting again once a child had room")
	}
	m.stop(graceful)
	m.updateAccepting(now)
	if m.accepting || m.lfd >= 0 {
		t.Fatal("still accepting after a stop")
	}
}

// nextStallCheck wakes the loop when a backlog would turn into a stall, and
// for the watchdog's warning and kill of a stalled child. The watchdog's
// kill is a death replaced at once.
func TestStallDeadlines(t *testing.T) {
	m, f, kids := newFakeMaster(t, 2, Config{Stall: 20 * time.Millisecond, Watchdog: 3 * time.Second})
	clk := withClock(m)
	start := clk.now()
	m.observe(start)
	m.queue = conns(t, 2)
	m.dispatch()
	var due []time.Time
	consider := func(t time.Time) { due = append(due, t) }
	m.nextStallCheck(consider)
	if len(due) != 2 || !due[0].Equal(start.Add(20*time.Millisecond)) {
		t.Fatalf("wake-ups %v, want each child's at +20ms", due)
	}
	m.accepted(kids[0], 1)
	m.observe(clk.add(25 * time.Millisecond))
	if !kids[1].h.stalled.Load() || kids[0].h.stalled.Load() {
		t.Fatal("child 1 not stalled, or child 0 is")
	}
	due = nil
	m.nextStallCheck(consider)
	stalledAt := time.Unix(0, kids[1].stalledAt)
	if len(due) != 2 || !due[0].Equal(stalledAt.Add(time.Second)) || !due[1].Equal(stalledAt.Add(3*time.Second)) {
		t.Fatalf("wake-ups %v, want the warning at +1s and the watchdog at +3s of %v", due, stalledAt)
	}
	m.observe(clk.add(time.Second))
	if !kids[1].warned || kids[1].killed {
		t.Fatal("no warning after a second, or killed early")
	}
	m.observe(clk.add(2 * time.Second))
	if !kids[1].killed || !kids[1].hung || m.slots[1].watchdogKills != 1 {
		t.Fatal("the watchdog did not kill a child stalled past -watchdog")
	}
	f.exit(kids[1].pid, killedBy(unix.SIGKILL))
	m.reap()
	m.maintain(clk.now())
	if k := kidOf(m, 1); k == nil || k == kids[1].kid || m.slots[1].failures != 0 {
		t.Fatalf("not replaced at once: %v, slot %+v", k, m.slots[1])
	}
}

// The fdpass TCP listener gets TCP_NODELAY, which accepted sockets inherit,
// and -defer-accept rounded to whole seconds (at least one); a reuseport
// master's reserved socket gets neither (its children set their own).
func TestTuneListener(t *testing.T) {
	for _, c := range []struct {
		cfg       Config
		deferSecs int
		nodelay   bool
	}{
		{Config{Mode: ModeFdpass, DeferAccept: 1500 * time.Millisecond}, 2, true},
		{Config{Mode: ModeFdpass, DeferAccept: time.Millisecond}, 1, true},
		{Config{Mode: ModeFdpass}, 0, true},
		{Config{Mode: ModeReuseport, DeferAccept: time.Second}, 0, false},
	} {
		fd, err := Listen("127.0.0.1:0", 16, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := tuneListener(fd, c.cfg); err != nil {
			t.Fatal(err)
		}
		got, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
		nodelay, err2 := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		unix.Close(fd)
		// The kernel keeps the timeout as retransmits and reports back the
		// seconds they cover, which may round up.
		if err != nil || (got == 0) != (c.deferSecs == 0) || got < c.deferSecs {
			t.Errorf("%+v: TCP_DEFER_ACCEPT %d (%v), want %d", c.cfg, got, err, c.deferSecs)
		}
		if err2 != nil || (nodelay != 0) != c.nodelay {
			t.Errorf("%+v: TCP_NODELAY %d (%v), want %v", c.cfg, nodelay, err2, c.nodelay)
		}
	}
}

// A Unix socket gets neither option, and is no error, whatever -listen
// names: socket activation may pass one to a master told to listen on TCP.
func TestTuneListenerUnix(t *testing.T) {
	fd, err := ListenUnix(filepath.Join(t.TempDir(), "s.sock"), 0o600, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := tuneListener(fd, Config{Mode: ModeFdpass, Listen: "127.0.0.1:8080", DeferAccept: time.Second}); err != nil {
		t.Fatalf("a Unix listener under -listen 127.0.0.1:8080: %v", err)
	}
}
