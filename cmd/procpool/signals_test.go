package main

// Signals and supervision, seen from outside: a graceful stop that
// finishes a request whose body is still arriving, a killed child replaced
// at once, a crash loop slowed down by backoff, SIGTTIN/SIGTTOU, and a
// dead master taking its children along.

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGracefulStopHalfBody sends SIGTERM while a request body is half sent
// and another connection sits idle: the listener closes at once (a new
// connection is refused), the idle connection is closed by the drain, the
// half-sent request is still answered in full with Connection: close once
// its body is complete, and then the master exits 0 with its children gone.
func TestGracefulStopHalfBody(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-grace=8s")
	kids := s.waitReady(2)
	pids := kidPids(kids)
	ids := identifyAll(t, pids)

	// An idle keep-alive connection, after one request, and one whose
	// request has half its body; a child holds it and has read all of it.
	idle, half := s.idleAndHalf(t)
	holder := s.waitHolder(t, half, pids)

	s.signal(syscall.SIGTERM)
	signalled := time.Now()

	// The listener closes: nothing listens on the port any more, and a new
	// connection is refused.
	s.waitNoListener(t, "SIGTERM")
	if c, err := net.DialTimeout("tcp", s.addr, ioTimeout); err == nil {
		c.Close()
		t.Errorf("a new connection after SIGTERM was accepted")
	} else if !refusedOrReset(err) {
		t.Errorf("a new connection after SIGTERM: %v, want refused", err)
	}

	// The drain closes the idle connection.
	if err := idle.waitClosed(ioTimeout); err != nil {
		t.Errorf("idle keep-alive connection during the drain: %v", err)
	}
	t.Logf("idle connection closed %v after SIGTERM", time.Since(signalled).Round(time.Millisecond))
	if s.hasExited() {
		t.Fatalf("master exited with a request still in progress; log:\n%s", s.log)
	}
	if !pidAlive(holder) {
		t.Fatalf("child %d holding the half-sent request is gone", holder)
	}

	// The rest of the body: the request is answered in full, with the close.
	r, err := half.roundTrip("world")
	if err != nil {
		t.Fatalf("response to the half-sent request after SIGTERM: %v", err)
	}
	if r.status != 200 || r.body != "helloworld" {
		t.Errorf("response to the half-sent request: status %d body %q, want 200 %q", r.status, r.body, "helloworld")
	}
	if !r.close { // net/http's reader takes Connection: close out of the header into this
		t.Errorf("response during the drain does not say Connection: close")
	}
	if err := half.waitClosed(ioTimeout); err != nil {
		t.Errorf("connection after the last response of the drain: %v", err)
	}

	s.waitExit(stopTimeout, "its last request finished")
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("master exited with %v after SIGTERM, want status 0", s.cmd.ProcessState)
	}
	if !waitGone(ids, startTimeout) {
		t.Errorf("children still alive after the master exited")
	}
}

// spawnTimes are the times, from the master's log, at which it spawned
// a child for slot.
func spawnTimes(t *testing.T, lines []string, slot int) []time.Time {
	t.Helper()
	var times []time.Time
	for _, line := range lines {
		if m := reSpawned.FindStringSubmatch(line); m != nil && m[2] == strconv.Itoa(slot) {
			times = append(times, lineTime(t, line))
		}
	}
	return times
}

// backoffSpawns is how many spawns of a crashing slot the backoff tests
// look at: five gaps, whose backoff is 100, 200, 400, 800 and 1600 ms.
const backoffSpawns = 6

// checkBackoff checks the gaps between the spawns of a slot whose
// children all died soon after they started: exponential backoff from
// 100 ms, doubling (README, SIGCHLD). Each gap holds at least the backoff of
// its turn, however fast the children died, so a gap never falls below
// 100, 200, 400 ... ms; and the gaps grow.
func checkBackoff(t *testing.T, spawns []time.Time, log fmt.Stringer) {
	t.Helper()
	if len(spawns) < backoffSpawns {
		t.Fatalf("%d spawns, want %d; log:\n%s", len(spawns), backoffSpawns, log)
	}
	var gaps []time.Duration
	for i := 1; i < backoffSpawns; i++ {
		gaps = append(gaps, spawns[i].Sub(spawns[i-1]))
	}
	t.Logf("gaps between spawns: %v", gaps)
	for i, g := range gaps {
		// The log's times are to the millisecond.
		if least := 100 * time.Millisecond << i; g < least-2*time.Millisecond {
			t.Errorf("spawn %d came %v after spawn %d, want at least %v (backoff from 100 ms doubling); gaps %v",
				i+2, g, i+1, least, gaps)
		}
	}
	if first, last := gaps[0], gaps[len(gaps)-1]; last < 2*first {
		t.Errorf("the gaps between spawns do not grow: first %v, last %v (%v)", first, last, gaps)
	}
}

// TestCrashLoopBackoff: children that keep dying within 2 s of their start
// are replaced with exponential backoff, 100 ms doubling to 5 s (README,
// SIGCHLD), whether they die before reporting ready (a broken binary or
// config: the crash hook makes every child exit 1 at once) or after (the
// test kills each child as soon as it reports ready). The master stays up
// throughout, and no crashing child ever reports ready.
func TestCrashLoopBackoff(t *testing.T) {
	t.Parallel()
	t.Run("before ready", func(t *testing.T) {
		t.Parallel()
		s := crashServer(t, 1, "", "-workers=1")
		var spawns []time.Time
		s.log.waitFor(30*time.Second, s.exited, func(lines []string) bool {
			return len(parseKids(lines, reSpawned)) >= backoffSpawns
		})
		if s.hasExited() {
			t.Fatalf("master exited in the crash loop: %v; log:\n%s", s.cmd.ProcessState, s.log)
		}
		lines := s.log.snapshot()
		spawns = spawnTimes(t, lines, 0)
		died := 0
		for _, line := range lines {
			if strings.Contains(line, `msg="child died unexpectedly"`) {
				died++
			}
			if strings.Contains(line, `msg="child ready"`) {
				t.Errorf("a crashing child reported ready: %s", line)
			}
		}
		if died < len(spawns)-1 {
			t.Errorf("%d unexpected deaths logged for %d spawns", died, len(spawns))
		}
		checkBackoff(t, spawns, s.log)
	})
	t.Run("after ready", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "-workers=1")
		// Each child is killed as soon as it reports ready; on a loaded
		// machine one may take 2 s to get there, and then its death is not a
		// quick one: the backoff starts over, and so does the run of quick
		// deaths the test looks at.
		killed := map[int]bool{}
		var run []int // children killed within 2 s of their spawn, in a row
		for len(run) < backoffSpawns-1 {
			if len(killed) == 30 {
				t.Fatalf("30 children killed, no %d of them in a row within 2 s of their spawn; log:\n%s", backoffSpawns-1, s.log)
			}
			var kid kidInfo
			if !s.log.waitFor(30*time.Second, s.exited, func(lines []string) bool {
				for _, k := range parseKids(lines, reReady) {
					if k.slot == 0 && !killed[k.pid] {
						kid = k
						return true
					}
				}
				return false
			}) {
				t.Fatalf("child %d of slot 0 not ready; log:\n%s", len(killed)+1, s.log)
			}
			if err := syscall.Kill(kid.pid, syscall.SIGKILL); err != nil {
				t.Fatalf("SIGKILL to child %d: %v", kid.pid, err)
			}
			killed[kid.pid] = true
			pid := fmt.Sprintf(" pid=%d ", kid.pid)
			var died time.Time
			if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
				died = firstTime(t, lines, `msg="child died unexpectedly"`, pid)
				return !died.IsZero()
			}) {
				t.Fatalf("no unexpected death of child %d logged; log:\n%s", kid.pid, s.log)
			}
			lived := died.Sub(firstTime(t, s.log.snapshot(), `msg="child spawned"`, pid))
			if lived >= 2*time.Second-50*time.Millisecond {
				t.Logf("child %d lived %v before its kill: not a quick death; the backoff starts over", kid.pid, lived)
				run = run[:0]
				continue
			}
			run = append(run, kid.pid)
		}
		// The spawn after the last kill.
		var next time.Time
		if !s.log.waitFor(30*time.Second, s.exited, func(lines []string) bool {
			for _, k := range parseKids(lines, reSpawned) {
				if k.slot == 0 && !killed[k.pid] {
					next = firstTime(t, lines, `msg="child spawned"`, fmt.Sprintf(" pid=%d ", k.pid))
					return true
				}
			}
			return false
		}) {
			t.Fatalf("no spawn after the last kill; log:\n%s", s.log)
		}
		if s.hasExited() {
			t.Fatalf("master exited in the crash loop: %v; log:\n%s", s.cmd.ProcessState, s.log)
		}
		var spawns []time.Time
		lines := s.log.snapshot()
		for _, pid := range run {
			spawns = append(spawns, firstTime(t, lines, `msg="child spawned"`, fmt.Sprintf(" pid=%d ", pid)))
		}
		checkBackoff(t, append(spawns, next), s.log)
	})
}

// TestTTINTTOU adds a child with SIGTTIN and removes one with each SIGTTOU.
func TestTTINTTOU(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	kids := s.waitReady(2)
	pids := sortedPids(kids)

	s.signal(syscall.SIGTTIN)
	var added kidInfo
	ok := s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		for _, k := range parseKids(lines, reReady) {
			if k.slot == 2 && k.gen == 0 {
				added = k
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no child for slot 2 after SIGTTIN; log:\n%s", s.log)
	}
	three := append(slices.Clone(pids), added.pid)
	slices.Sort(three)
	if got, ok := s.waitChildren(three, startTimeout); !ok {
		t.Fatalf("children after SIGTTIN %v, want %v", got, three)
	}
	if r := s.get(t, "/"); r.status != 200 {
		t.Errorf("request with 3 children: %+v", r)
	}

	s.signal(syscall.SIGTTOU)
	if got, ok := s.waitChildren(pids, startTimeout); !ok {
		t.Fatalf("children after SIGTTOU %v, want %v (the slot 2 child %d retired)", got, pids, added.pid)
	}
	s.signal(syscall.SIGTTOU)
	one := []int{kids[0].pid} // slot 1 goes
	if got, ok := s.waitChildren(one, startTimeout); !ok {
		t.Fatalf("children after a second SIGTTOU %v, want %v", got, one)
	}
	for i := range 4 {
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("request %d with one child: %+v", i, r)
		}
	}
	var counts []string
	for _, line := range s.log.snapshot() {
		if m := reWorkers.FindStringSubmatch(line); m != nil {
			counts = append(counts, m[1])
		}
	}
	if !slices.Equal(counts, []string{"3", "2", "1"}) {
		t.Errorf("workers changed to %v, want [3 2 1]", counts)
	}
}

// TestRepeatedStopSignal: a supervisor may send SIGTERM again while the
// master stops (systemd does, so do impatient operators). However late the
// repeat comes, even while the master tears itself down, the stop stays
// graceful: exit status 0, not death by the signal's default action.
func TestRepeatedStopSignal(t *testing.T) {
	t.Parallel()
	for round := range 5 {
		s := startServer(t, "-workers=1")
		s.waitReady(1)
		s.cmd.Process.Signal(syscall.SIGTERM)
		for !s.hasExited() {
			if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				break // gone between the check and the signal
			}
			time.Sleep(200 * time.Microsecond)
		}
		<-s.exited
		if st := s.cmd.ProcessState; st.ExitCode() != 0 {
			t.Fatalf("round %d: master ended with %v under repeated SIGTERM, want exit status 0", round, st)
		}
	}
}

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
