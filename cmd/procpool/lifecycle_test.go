package main

// Supervision: a dead child is replaced, a dead master takes its children
// along.

import (
	"errors"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestChildRespawn kills a child with SIGKILL: service goes on at once, a
// replacement appears for the slot, and it takes its share of new
// connections (exactly: the stall rule is off, as in TestRoundRobin).
func TestChildRespawn(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-stall=0")
	kids := s.waitReady(2)
	before := s.children()
	if !slices.Equal(before, sortedPids(kids)) {
		t.Fatalf("master's children %v, ready children %v", before, kids)
	}
	victim, survivor := kids[0], kids[1]
	victimID, err := identify(victim.pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(victim.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !pollFor(startTimeout, func() bool { return !victimID.alive() }) {
		t.Fatalf("child %d still alive %v after SIGKILL", victim.pid, startTimeout)
	}

	// Service continues right away: connections dealt to the dead child
	// before the master noticed must be served by the other.
	for i := range 10 {
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Fatalf("request %d after the kill: %+v", i, r)
		}
	}

	var replacement int
	ok := pollFor(startTimeout, func() bool {
		for _, pid := range s.children() {
			if pid != victim.pid && pid != survivor.pid {
				replacement = pid
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no replacement child within %v of the kill; children %v", startTimeout, s.children())
	}
	ready := s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		for _, k := range parseKids(lines, reReady) {
			if k.pid == replacement && k.slot == victim.slot {
				return true
			}
		}
		return false
	})
	if !ready {
		t.Fatalf("replacement %d never reported ready for slot %d", replacement, victim.slot)
	}
	if now := s.children(); !slices.Equal(now, sortedPids([]kidInfo{survivor, {pid: replacement}})) {
		t.Fatalf("children after the respawn %v, want the survivor %d and the replacement %d", now, survivor.pid, replacement)
	}

	// Both children serve again, round-robin.
	const n = 10
	conns := openConns(t, s, n)
	halves := func(got sockets) bool { return got.byPid[survivor.pid] == n/2 && got.byPid[replacement] == n/2 }
	got := pollOwners(t, halves, s.port, tcpEstablished, clientPorts(conns), s.pid, survivor.pid, replacement)
	if got.byPid[survivor.pid] != n/2 || got.byPid[replacement] != n/2 {
		t.Errorf("after the respawn the survivor holds %d and the replacement %d of %d connections, want %d each",
			got.byPid[survivor.pid], got.byPid[replacement], n, n/2)
	}
}

// TestMasterKilled kills the master with SIGKILL: its children exit by
// themselves (nobody else signals them), the clients' connections close, and
// the port is free.
func TestMasterKilled(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"fdpass", "reuseport"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const workers = 2
			s := startServer(t, "-mode="+mode, "-workers=2")
			kids := s.waitReady(workers)
			ids := identifyAll(t, kidPids(kids))
			conns := openConns(t, s, 2*workers) // every child holds a connection

			if err := s.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-s.exited
			killed := time.Now()
			if !waitGone(ids, startTimeout) {
				for _, id := range stillAlive(ids) {
					t.Errorf("child %d still alive %v after the master was killed", id.pid, time.Since(killed).Round(time.Millisecond))
				}
				return // the cleanup kills them
			}

			for i, c := range conns {
				if err := c.waitClosed(ioTimeout); err != nil {
					t.Errorf("connection %d after the master died: %v", i, err)
				}
			}
			s.waitNoListener(t, "the master died")
			ln, err := net.Listen("tcp", s.addr)
			if err != nil {
				if errors.Is(err, syscall.EADDRINUSE) {
					t.Fatalf("port still taken after the master and children died: %v", err)
				}
				t.Fatal(err)
			}
			ln.Close()
		})
	}
}
