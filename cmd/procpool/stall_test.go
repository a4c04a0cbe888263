package main

// Stall-aware dispatch against the real binary: a stopped child is dealt
// around and what was queued for it is served elsewhere; a drain, whether the
// master's or a SIGTERM sent to a child, resets nothing that was queued; the
// watchdog kills only what is really stuck.

import (
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopChild sends SIGSTOP to pid and makes sure it is continued at cleanup,
// so a failed test leaves no stopped process behind.
func stopChild(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %d: %v", pid, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	// kill returns once the signal is queued; the threads stop as each
	// comes to it, and on a loaded machine the loop's thread may first
	// take a message and read a request, which then waits for the SIGCONT.
	// What a test makes after this must find the child stopped.
	if !pollFor(ioTimeout, func() bool { return allThreadsStopped(pid) }) {
		t.Fatalf("child %d: not every thread stopped after SIGSTOP", pid)
	}
}

// getMany makes n requests at once, each on its own connection, and returns
// the errors (nil for a 200 with the expected body).
func getMany(s *server, n int, path, want string) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = getOnce(s, path, want)
		}()
	}
	wg.Wait()
	return errs
}

func getOnce(s *server, path, want string) error {
	r, err := fetch(s.addr, path)
	switch {
	case err != nil:
		return err
	case r.status != 200 || r.body != want:
		return fmt.Errorf("status %d body %q", r.status, r.body)
	}
	return nil
}

func countErrs(errs []error) (n int, first error) {
	for _, err := range errs {
		if err != nil {
			if n == 0 {
				first = err
			}
			n++
		}
	}
	return n, first
}

// A stopped child gets no new connections: every request made while it is
// stopped is answered by the other one, under either dispatch order. Once it
// runs again it is dealt connections again.
func TestStoppedChildIsDealtAround(t *testing.T) {
	for _, order := range []string{"rr", "least"} {
		t.Run(order, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, "-workers=2", "-affinity=false", "-dispatch="+order, "-admin=127.0.0.1:0")
			admin := adminAddr(t, s)
			kids := s.waitReady(2)
			stopped := kids[0].pid
			stopChild(t, stopped)
			// The child stays stopped for as long as these take: were it still
			// dealt connections, half would wait for the SIGCONT and time out.
			for round := range 5 {
				if n, err := countErrs(getMany(s, 20, "/", "Hello World")); n > 0 {
					// What the master saw of each child says where they went.
					body, _ := adminGet(admin, "/status")
					t.Fatalf("round %d: %d of 20 requests failed while a child was stopped: %v\n/status: %s", round, n, err, body)
				}
			}
			st := getStatus(t, admin)
			for _, c := range st.Children {
				if c.Pid == stopped && (!c.Stalled || c.TakenBack == 0) {
					t.Errorf("stopped child in /status: stalled %v, taken back %d; want stalled and some taken back", c.Stalled, c.TakenBack)
				}
			}
			syscall.Kill(stopped, syscall.SIGCONT)
			// Resumed, it serves again: its accepted count moves.
			before := acceptedBy(t, admin, stopped)
			if !pollFor(ioTimeout, func() bool {
				getMany(s, 4, "/", "Hello World")
				return acceptedBy(t, admin, stopped) > before
			}) {
				t.Fatalf("resumed child %d was dealt no connection; log:\n%s", stopped, s.log)
			}
		})
	}
}

func acceptedBy(t *testing.T, admin string, pid int) uint64 {
	t.Helper()
	for _, c := range getStatus(t, admin).Children {
		if c.Pid == pid {
			return c.Accepted
		}
	}
	t.Fatalf("child %d not in /status", pid)
	return 0
}

// With the stall rule off, connections pile up in a stopped child's channel
// until it is full. A reload then retires that child: what is queued for it
// is taken back and served by the new generation, and the drain command still
// reaches it; nothing is reset.
func TestReloadTakesBackQueue(t *testing.T) {
	t.Parallel()
	// Half of the requests go to the stopped child.
	const n = 700
	s, victim, done := queueOnStopped(t, n, 50)
	syscall.Kill(s.pid, syscall.SIGHUP)
	waitLog(t, s, `msg="reload done"`)
	syscall.Kill(victim, syscall.SIGCONT)
	if bad, err := countErrs(<-done); bad > 0 {
		t.Fatalf("%d of %d requests failed across a reload with a full channel: %v", bad, n, err)
	}
}

// queueOnStopped starts two children with the stall rule off, stops the
// first (victim), and makes n requests at once, whose errors come on done,
// and waits until at least least of them are queued in the children's
// channels.
func queueOnStopped(t *testing.T, n, least int) (s *server, victim int, done <-chan []error) {
	t.Helper()
	s = startServer(t, "-workers=2", "-affinity=false", "-stall=0")
	victim = s.waitReady(2)[0].pid
	stopChild(t, victim)
	ch := make(chan []error, 1)
	go func() { ch <- getMany(s, n, "/", "Hello World") }()
	if !pollFor(ioTimeout, func() bool { return queued(t, s) >= least }) {
		t.Fatalf("connections did not queue for the stopped child")
	}
	return s, victim, ch
}

// queued is how many accepted connections wait in the children's channels:
// established sockets on the port that no process holds in its fd table
// (one still in the kernel's accept queue has no inode and is not listed).
func queued(t *testing.T, s *server) int {
	t.Helper()
	pids := append([]int{s.pid}, s.children()...)
	return socketOwners(t, s.port, tcpEstablished, nil, pids...).unowned
}

// A child sent SIGTERM by someone else tells the master, which deals it
// nothing more and starts a replacement; what was already queued for it is
// answered, not reset.
func TestChildSIGTERMResetsNothing(t *testing.T) {
	t.Parallel()
	s, victim, done := queueOnStopped(t, 40, 5)
	syscall.Kill(victim, syscall.SIGTERM) // pending until it runs
	syscall.Kill(victim, syscall.SIGCONT)
	if bad, err := countErrs(<-done); bad > 0 {
		t.Fatalf("%d of 40 requests queued to a child sent SIGTERM failed: %v", bad, err)
	}
	waitLog(t, s, `msg="child draining on a signal of its own" pid=`+fmt.Sprint(victim))
	// From now on it gets nothing: every new request is answered.
	if bad, err := countErrs(getMany(s, 20, "/", "Hello World")); bad > 0 {
		t.Fatalf("%d of 20 requests after the child's drain failed: %v", bad, err)
	}
	waitLog(t, s, fmt.Sprintf(`msg="child exited" pid=%d`, victim))
	if strings.Contains(s.log.String(), "died unexpectedly") {
		t.Errorf("a child drained by SIGTERM was logged as an unexpected death; log:\n%s", s.log)
	}
}

// An idle pool has nothing stalled, and children running 10 ms inline
// handlers under steady load are neither called stalled for long nor killed
// by a watchdog of 500 ms.
func TestBusyChildrenAreNotKilled(t *testing.T) {
	t.Parallel()
	s := sleepServer(t, "-workers=2", "-affinity=false", "-watchdog=500ms", "-admin=127.0.0.1:0")
	admin := adminAddr(t, s)
	kids := s.waitReady(2)
	time.Sleep(1500 * time.Millisecond) // idle children sleep in epoll_wait for up to a second
	for _, c := range getStatus(t, admin).Children {
		if c.Stalled || c.Backlog != 0 {
			t.Errorf("idle child %d: stalled %v backlog %d", c.Pid, c.Stalled, c.Backlog)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	var failed sync.Map
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := getOnce(s, "/sleep/10", "slept\n"); err != nil {
					failed.Store(w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	failed.Range(func(k, v any) bool {
		t.Errorf("client %v: %v", k, v)
		return true
	})
	if strings.Contains(s.log.String(), "watchdog") {
		t.Errorf("the watchdog fired on 10 ms handlers; log:\n%s", s.log)
	}
	if pids := s.children(); len(pids) != 2 || !samePids(pids, kidPids(kids)) {
		t.Errorf("children %v after the load, want the same %v", pids, kidPids(kids))
	}
}

func samePids(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[int]bool{}
	for _, p := range a {
		seen[p] = true
	}
	for _, p := range b {
		if !seen[p] {
			return false
		}
	}
	return true
}

// The watchdog kills a child stuck in a handler past -watchdog, after
// logging the request it is stuck in; a replacement serves, and the requests
// that arrived meanwhile were served by the other child.
func TestWatchdogKillsStuckChild(t *testing.T) {
	t.Parallel()
	s := sleepServer(t, "-workers=2", "-affinity=false", "-watchdog=300ms", "-admin=127.0.0.1:0")
	admin := adminAddr(t, s)
	s.waitReady(2)
	stuck := make(chan error, 1)
	go func() { stuck <- getOnce(s, "/sleep/30000", "slept\n") }()
	var stuckPid int
	if !pollFor(ioTimeout, func() bool {
		for _, c := range getStatus(t, admin).Children {
			if c.Request != nil && c.Request.Path == "/sleep/30000" {
				stuckPid = c.Pid
				return true
			}
		}
		return false
	}) {
		t.Fatal("no child published the request /sleep/30000 as running")
	}
	// Connections keep coming: the stuck child gets one, stalls, and the
	// watchdog kills it; every request is answered by someone.
	if bad, err := countErrs(getMany(s, 20, "/", "Hello World")); bad > 0 {
		t.Fatalf("%d of 20 requests beside a stuck child failed: %v", bad, err)
	}
	waitLog(t, s, `msg="watchdog: killing a stalled child" pid=`+fmt.Sprint(stuckPid))
	for _, l := range s.log.snapshot() {
		if strings.Contains(l, "watchdog: killing") && !strings.Contains(l, "method=GET path=/sleep/30000") {
			t.Errorf("watchdog line does not name the stuck request: %s", l)
		}
	}
	if err := <-stuck; err == nil {
		t.Error("the stuck request was answered although its child was killed")
	}
	if !pollFor(ioTimeout, func() bool {
		for _, c := range getStatus(t, admin).Children {
			if c.Slot == slotOf(s, stuckPid) && c.Pid != stuckPid && c.WatchdogKills == 1 && c.State == "ready" {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no ready replacement with watchdog_kills 1; status %+v", getStatus(t, admin))
	}
}

func slotOf(s *server, pid int) int {
	for _, k := range parseKids(s.log.snapshot(), reSpawned) {
		if k.pid == pid {
			return k.slot
		}
	}
	return -1
}

// Connections queued to a child that dies are taken back out of its channel
// and answered by the others: a stopped child collects a queue (with the
// stall rule off), then is killed.
func TestDeadChildQueueRecovered(t *testing.T) {
	t.Parallel()
	s, victim, done := queueOnStopped(t, 40, 10)
	syscall.Kill(victim, syscall.SIGKILL)
	if bad, err := countErrs(<-done); bad > 0 {
		t.Fatalf("%d of 40 requests queued to a child that was killed failed: %v", bad, err)
	}
	waitLog(t, s, fmt.Sprintf(`msg="recovered connections of a dead child" pid=%d`, victim))
}
