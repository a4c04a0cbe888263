package master

// Unit tests of the master's decisions about its children: reaping,
// respawning with backoff, fatal exits, the serving generation, reload,
// resize and the upgrade's timeout. The processes are fakes (fakeSys), the
// clock is the test's; the channels are real.

import (
	"errors"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// clock is a test's time, which it moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                { return c.t }
func (c *clock) add(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

func withClock(m *Master) *clock {
	c := &clock{time.Unix(1_000_000, 0)}
	m.now = c.now
	return c
}

// kidOf is the live, not draining child of slot in the current generation.
func kidOf(m *Master, slot int) *kid {
	for _, k := range m.kids {
		if k.slot == slot && k.gen == m.gen && k.state != draining {
			return k
		}
	}
	return nil
}

// A slot whose children keep dying soon after their start (before they are
// ready, or within quickDeath of it) backs off: 100 ms doubling up to 5 s.
// A child that lived longer is replaced spawnGap after its start, at once by
// then, and the backoff starts over.
func TestRespawnSpacing(t *testing.T) {
	type death struct {
		ready bool               // it said ready first
		lived time.Duration      // from its start
		ws    syscall.WaitStatus // how it ended
		delay time.Duration      // until its replacement is started, from its death
	}
	crash := func(delay time.Duration) death {
		return death{lived: 10 * time.Millisecond, ws: exited(1), delay: delay}
	}
	cases := []struct {
		name   string
		deaths []death
	}{
		{"a crash loop before ready backs off exponentially, capped at 5 s", []death{
			crash(100 * time.Millisecond), crash(200 * time.Millisecond), crash(400 * time.Millisecond),
			crash(800 * time.Millisecond), crash(1600 * time.Millisecond), crash(3200 * time.Millisecond),
			crash(5 * time.Second), crash(5 * time.Second),
		}},
		{"a ready child dying within quickDeath backs off too", []death{
			{ready: true, lived: time.Second, ws: killedBy(unix.SIGSEGV), delay: 100 * time.Millisecond},
			{ready: true, lived: quickDeath - time.Millisecond, ws: exited(1), delay: 200 * time.Millisecond},
		}},
		{"a child that served past quickDeath is replaced at once and resets the backoff", []death{
			crash(100 * time.Millisecond), crash(200 * time.Millisecond),
			{ready: true, lived: quickDeath, ws: killedBy(unix.SIGKILL), delay: 0},
			crash(100 * time.Millisecond),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, f, _ := newFakeMaster(t, 2, Config{})
			clk := withClock(m)
			first := kidOf(m, 0)
			m.retire(first) // start slot 0 over on the test's clock
			f.exit(first.pid, exited(0))
			m.reap()
			m.maintain(clk.now())
			for i, d := range c.deaths {
				k := kidOf(m, 0)
				if k == nil || !k.started.Equal(clk.now()) {
					t.Fatalf("death %d: slot 0 has no child started now (%v)", i, k)
				}
				if d.ready {
					f.ready(k)
				}
				died := clk.add(d.lived)
				f.exit(k.pid, d.ws)
				m.reap()
				if kidOf(m, 0) != nil {
					t.Fatalf("death %d: the dead child is still counted", i)
				}
				if d.delay > 0 {
					m.maintain(died.Add(d.delay - time.Millisecond))
					if kidOf(m, 0) != nil {
						t.Fatalf("death %d: respawned before %v", i, d.delay)
					}
				}
				clk.add(d.delay)
				m.maintain(clk.now())
				if kidOf(m, 0) == nil {
					t.Fatalf("death %d: not respawned after %v (respawn at +%v)", i, d.delay, m.slots[0].respawnAt.Sub(died))
				}
			}
			if k := kidOf(m, 1); k == nil || k.state != ready {
				t.Error("the other slot's child was touched")
			}
		})
	}
}

// Exit status 2 is fatal: the slot is not respawned. When every slot is
// fatal the master stops, and Run returns ErrChildrenFailed.
func TestFatalExit(t *testing.T) {
	cases := []struct {
		name    string
		fatal   []int // slots whose child exits 2
		stopped bool
	}{
		{"one slot of two", []int{1}, false},
		{"every slot", []int{0, 1}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, f, _ := newFakeMaster(t, 2, Config{})
			clk := withClock(m)
			for _, slot := range c.fatal {
				f.exit(kidOf(m, slot).pid, exited(2))
			}
			m.reap()
			m.maintain(clk.add(time.Hour))
			for _, slot := range c.fatal {
				if !m.slots[slot].fatal || kidOf(m, slot) != nil {
					t.Errorf("slot %d: fatal %v, child %v; want fatal and none", slot, m.slots[slot].fatal, kidOf(m, slot))
				}
			}
			if got := m.stopping == fast; got != c.stopped {
				t.Errorf("master stopping %v, want stopped %v", m.stopping, c.stopped)
			}
			if err := m.stopErr(); c.stopped != errors.Is(err, ErrChildrenFailed) {
				t.Errorf("stopErr %v, stopped %v", err, c.stopped)
			}
		})
	}
}

// Exits the master expects, or caused, are no failures.
func TestReapExpected(t *testing.T) {
	t.Run("a draining child exits", func(t *testing.T) {
		m, f, _ := newFakeMaster(t, 1, Config{})
		k := kidOf(m, 0)
		m.retire(k)
		f.exit(k.pid, exited(0))
		m.reap()
		if len(m.kids) != 0 || m.slots[0].failures != 0 || !m.slots[0].respawnAt.IsZero() {
			t.Fatalf("kids %d, slot %+v", len(m.kids), m.slots[0])
		}
	})
	t.Run("a child the watchdog killed is replaced at once", func(t *testing.T) {
		m, f, _ := newFakeMaster(t, 1, Config{})
		clk := withClock(m)
		k := kidOf(m, 0)
		k.killed, k.hung = true, true
		f.exit(k.pid, killedBy(unix.SIGKILL))
		m.reap()
		m.maintain(clk.now())
		if m.slots[0].failures != 0 || kidOf(m, 0) == nil {
			t.Fatalf("slot %+v, child %v; want no backoff and a new child", m.slots[0], kidOf(m, 0))
		}
	})
	t.Run("a child of the previous generation dies", func(t *testing.T) {
		m, f, _ := newFakeMaster(t, 1, Config{})
		old := kidOf(m, 0)
		m.reload()
		f.exit(old.pid, exited(2))
		m.reap()
		if m.slots[0].fatal || m.slots[0].failures != 0 {
			t.Fatalf("the new generation's slot paid for the old one: %+v", m.slots[0])
		}
	})
	t.Run("during a stop", func(t *testing.T) {
		m, f, _ := newFakeMaster(t, 1, Config{})
		k := kidOf(m, 0)
		m.stop(fast)
		if sigs := f.killed(k.pid); len(sigs) != 0 {
			t.Fatalf("told by signal %v although its channel had room", sigs)
		}
		f.exit(k.pid, exited(1))
		m.reap()
		if len(m.kids) != 0 || m.slots[0].failures != 0 {
			t.Fatalf("kids %d, slot %+v", len(m.kids), m.slots[0])
		}
	})
	t.Run("a process that is no child", func(t *testing.T) {
		m, f, _ := newFakeMaster(t, 1, Config{})
		f.exits = append(f.exits, fakeExit{pid: 12, ws: exited(0)})
		m.reap()
		if len(m.kids) != 1 {
			t.Fatal("a stranger's exit cost a child")
		}
	})
}

// A spawn that fails (fork, or no stats cell left) backs the slot off as a
// crash would.
func TestSpawnFails(t *testing.T) {
	m, f, _ := newFakeMaster(t, 1, Config{})
	clk := withClock(m)
	m.setWorkers(2)
	f.fail = syscall.EAGAIN
	m.maintain(clk.now())
	if kidOf(m, 1) != nil || m.slots[1].failures != 1 || !m.slots[1].respawnAt.Equal(clk.now().Add(backoffBase)) {
		t.Fatalf("after a failed fork: child %v, slot %+v", kidOf(m, 1), m.slots[1])
	}
	m.maintain(clk.add(backoffBase))
	if kidOf(m, 1) == nil {
		t.Fatal("not spawned once the backoff passed")
	}

	m.setWorkers(3)
	m.nextCell, m.freeCells = ipc.Cells, nil
	starts := f.starts
	m.maintain(clk.now())
	if kidOf(m, 2) != nil || f.starts != starts || m.slots[2].failures != 1 {
		t.Fatalf("without a cell: child %v, starts %d, slot %+v", kidOf(m, 2), f.starts-starts, m.slots[2])
	}
}

// What was queued for a child that died is taken back out of its channel
// and dealt to the others, in order; commands queued for it go nowhere.
func TestBuryTakesBack(t *testing.T) {
	m, f, kids := newFakeMaster(t, 3, Config{Stall: -1})
	m.queue = conns(t, 9)
	want := inodes(t, m.queue)
	m.dispatch()
	m.tell(kids[1].kid, ipc.CmdReopen)
	f.exit(kids[1].pid, killedBy(unix.SIGSEGV))
	m.reap()
	if got := inodes(t, m.queue); len(got) != 3 || got[0] != want[1] || got[1] != want[4] || got[2] != want[7] {
		t.Fatalf("queue after the death: %v, want child 1's share of %v in order", got, want)
	}
	if len(m.targets) != 2 || m.targets[0] != kids[0].kid || m.targets[1] != kids[2].kid {
		t.Fatalf("targets after the death: %d", len(m.targets))
	}
	m.dispatch()
	n0, cmds0 := kids[0].take(t)
	n2, cmds2 := kids[2].take(t)
	if n0+n2 != 9 || len(cmds0)+len(cmds2) != 0 {
		t.Errorf("the others got %d and %d fds, commands %v %v; want all 9 and no command", n0, n2, cmds0, cmds2)
	}
}

// retarget: the ready children of the serving generation, in slot order;
// until a newer generation is ready in every slot, the older one serves.
func TestRetarget(t *testing.T) {
	type k struct {
		slot, gen int
		state     kidState
		killed    bool
	}
	cases := []struct {
		name     string
		gen      int // current
		serving  int
		stopping stopKind
		kids     []k
		want     []int // indexes into kids
	}{
		{"slot order", 0, 0, running,
			[]k{{2, 0, ready, false}, {0, 0, ready, false}, {1, 0, ready, false}}, []int{1, 2, 0}},
		{"a gap in the slots", 0, 0, running,
			[]k{{0, 0, ready, false}, {3, 0, ready, false}}, []int{0, 1}},
		{"starting and draining children get nothing", 0, 0, running,
			[]k{{0, 0, starting, false}, {1, 0, draining, false}, {2, 0, ready, false}}, []int{2}},
		{"the old generation serves until the new one is ready everywhere", 1, 0, running,
			[]k{{0, 1, ready, false}, {1, 1, starting, false}, {0, 0, ready, false}, {1, 0, ready, false}}, []int{2, 3}},
		{"the new generation serves once it is", 1, 1, running,
			[]k{{0, 0, draining, false}, {0, 1, ready, false}, {1, 1, ready, false}}, []int{1, 2}},
		{"with none ready in the serving generation, the newest with one", 2, 0, running,
			[]k{{0, 0, draining, false}, {0, 1, ready, false}, {1, 2, ready, false}}, []int{2}},
		{"none ready", 0, 0, running, []k{{0, 0, starting, false}}, nil},
		{"a graceful stop deals to all but starting and killed ones", 0, 0, graceful,
			[]k{{0, 0, draining, false}, {1, 0, starting, false}, {2, 0, draining, true}, {3, 1, draining, false}}, []int{0, 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := &Master{gen: c.gen, serving: c.serving, stopping: c.stopping}
			for _, x := range c.kids {
				m.kids = append(m.kids, &kid{slot: x.slot, gen: x.gen, state: x.state, killed: x.killed})
			}
			m.retarget()
			var got []int
			for _, t := range m.targets {
				for i, k := range m.kids {
					if k == t {
						got = append(got, i)
					}
				}
			}
			if len(got) != len(c.want) {
				t.Fatalf("targets %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("targets %v, want %v", got, c.want)
				}
			}
		})
	}
}

// A reload starts a new generation and retires the old one only once every
// slot of the new one is ready; until then the old one serves.
func TestReloadRetiresOldOnceAllReady(t *testing.T) {
	m, f, old := newFakeMaster(t, 2, Config{Stall: -1})
	m.cfg.Reload = func() (Config, error) {
		return Config{Mode: ModeFdpass, Workers: 3, Dispatch: DispatchLeast, Stall: 5 * time.Millisecond,
			Watchdog: time.Minute}, nil
	}
	m.reload()
	if m.gen != 1 || len(m.slots) != 3 || len(m.kids) != 5 || !m.reloading {
		t.Fatalf("after the reload: gen %d, slots %d, kids %d, reloading %v", m.gen, len(m.slots), len(m.kids), m.reloading)
	}
	if m.cfg.Dispatch != DispatchLeast || m.cfg.Stall != 5*time.Millisecond || m.cfg.Watchdog != time.Minute {
		t.Errorf("dispatch settings not reloaded: %q %v %v", m.cfg.Dispatch, m.cfg.Stall, m.cfg.Watchdog)
	}
	for slot := range 3 {
		if slot < 2 {
			for _, o := range old {
				if o.state != ready {
					t.Fatalf("old child %d is %v with %d of 3 new ones ready", o.slot, o.state, slot)
				}
				if n, cmds := o.take(t); n != 0 || len(cmds) != 0 {
					t.Fatalf("old child %d was told %v with %d of 3 new ones ready", o.slot, cmds, slot)
				}
			}
			if len(m.targets) != 2 || m.targets[0].gen != 0 {
				t.Fatalf("with %d new ready, targets are not the old generation", slot)
			}
		}
		f.ready(kidOf(m, slot))
	}
	for _, o := range old {
		if _, cmds := o.take(t); o.state != draining || len(cmds) != 1 {
			t.Errorf("old child %d: %v, told %v; want draining, told once", o.slot, o.state, cmds)
		}
	}
	if m.serving != 1 || m.reloading || len(m.targets) != 3 || m.targets[0].gen != 1 {
		t.Fatalf("serving %d, reloading %v, %d targets", m.serving, m.reloading, len(m.targets))
	}
}

func TestReloadRejected(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		err  error
	}{
		{"an error", Config{}, errors.New("bad config")},
		{"a new listen address", Config{Listen: "127.0.0.1:1", Mode: ModeFdpass, Workers: 5}, nil},
		{"a new mode", Config{Mode: ModeReuseport, Workers: 5}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, f, _ := newFakeMaster(t, 2, Config{})
			m.cfg.Reload = func() (Config, error) { return c.cfg, c.err }
			starts := f.starts
			m.reload()
			if m.gen != 0 || len(m.slots) != 2 || f.starts != starts || m.reloading {
				t.Fatalf("a rejected reload changed the pool: gen %d, slots %d, starts %d", m.gen, len(m.slots), f.starts-starts)
			}
		})
	}
}

// SIGTTIN adds a slot, SIGTTOU retires the last one's child; never below one.
func TestResize(t *testing.T) {
	m, _, kids := newFakeMaster(t, 2, Config{})
	m.pending = pending(unix.SIGTTIN)
	m.handleSignals()
	m.maintain(m.now())
	if len(m.slots) != 3 || kidOf(m, 2) == nil || m.cfg.Workers != 3 {
		t.Fatalf("after SIGTTIN: %d slots, child %v", len(m.slots), kidOf(m, 2))
	}
	third := kidOf(m, 2)
	for range 3 {
		m.pending = pending(unix.SIGTTOU)
		m.handleSignals()
	}
	if len(m.slots) != 1 || third.state != draining || kids[1].state != draining || kids[0].state != ready {
		t.Fatalf("after SIGTTOU three times: %d slots, states %v %v %v", len(m.slots), kids[0].state, kids[1].state, third.state)
	}
}

// A new master that is not ready within upgradeTimeout is killed, and this
// one goes on serving.
func TestUpgradeTimeout(t *testing.T) {
	m, f, _ := upgradeMaster(t)
	clk := withClock(m)
	m.upgrade()
	if m.upgradeFd < 0 || m.upgradePid == 0 {
		t.Fatal("upgrade not begun")
	}
	pid := m.upgradePid
	m.checkUpgrade(clk.add(upgradeTimeout))
	if m.upgradeFd < 0 || len(f.killed(pid)) != 0 {
		t.Fatal("gave up on the new master before the timeout")
	}
	m.checkUpgrade(clk.add(time.Millisecond))
	if m.upgradeFd >= 0 || len(f.killed(pid)) != 1 || f.killed(pid)[0] != unix.SIGKILL {
		t.Fatalf("after the timeout: upgrade fd %d, signals %v", m.upgradeFd, f.killed(pid))
	}
	m.reap()
	if m.upgradePid != 0 || m.stopping != running {
		t.Fatalf("after the new master's exit: upgrade pid %d, stopping %v", m.upgradePid, m.stopping)
	}
	m.upgrade()
	if m.upgradeFd < 0 {
		t.Fatal("no second try after a failed upgrade")
	}
}

// Both ends of the upgrade handshake: the new master's reportUpgraded is
// what the old one's onUpgradeReady waits for.
func TestUpgradeHandshake(t *testing.T) {
	t.Run("ready", func(t *testing.T) {
		m, f, _ := upgradeMaster(t)
		m.upgrade()
		p := f.procs[m.upgradePid]
		if p.getenv(EnvInheritFd) != "3" || p.getenv(EnvUpgradeFd) != "4" || p.path != m.cfg.Exe || p.argv[0] != MasterTitle {
			t.Fatalf("new master started with %s %q, env %q", p.path, p.argv, p.env)
		}
		// What the new master does once its children are ready.
		t.Setenv(EnvUpgradeFd, strconv.Itoa(p.fd(t, upgradeReadyFd)))
		newer := &Master{upgradeIn: ipc.NewChannel(UpgradeChannel()), log: m.log}
		newer.reportUpgraded()
		m.onUpgradeReady()
		if m.upgradeFd >= 0 || m.stopping != graceful || m.handover == nil {
			t.Fatalf("after the new master's ready: upgrade fd %d, stopping %v, hand-over %v", m.upgradeFd, m.stopping, m.handover)
		}
	})
	t.Run("exits first", func(t *testing.T) {
		m, f, _ := upgradeMaster(t)
		m.upgrade()
		f.exit(m.upgradePid, exited(1))
		m.reap()
		if m.upgradeFd >= 0 || m.upgradePid != 0 || m.stopping != running {
			t.Fatalf("after the new master died: upgrade fd %d, pid %d, stopping %v", m.upgradeFd, m.upgradePid, m.stopping)
		}
	})
	t.Run("cannot start", func(t *testing.T) {
		m, f, _ := upgradeMaster(t)
		f.fail = syscall.ENOENT
		m.upgrade()
		if m.upgradeFd >= 0 || m.stopping != running {
			t.Fatal("a failed start left an upgrade in progress")
		}
	})
	t.Run("one at a time", func(t *testing.T) {
		m, f, _ := upgradeMaster(t)
		m.upgrade()
		m.upgrade()
		if f.starts != 2 { // the child and one new master
			t.Fatalf("%d processes started", f.starts)
		}
	})
}

// upgradeMaster is a test master with a listening socket (a socketpair end
// will do) and a binary to upgrade to.
func upgradeMaster(t *testing.T) (*Master, *fakeSys, []testKid) {
	t.Helper()
	m, f, kids := newFakeMaster(t, 1, Config{Exe: "/nonexistent/procpool", MasterArgs: []string{"-workers", "1"}})
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeLater(t, p[1])
	m.lfd = p[0]
	t.Cleanup(func() {
		if m.lfd >= 0 {
			unix.Close(m.lfd)
		}
	})
	t.Setenv("NOTIFY_SOCKET", "")
	return m, f, kids
}

// fd is the test's copy of the process's fd n; the caller owns it.
func (p *fakeProc) fd(t *testing.T, n int) int {
	t.Helper()
	fd, ok := p.fds[n]
	if !ok {
		t.Fatalf("%s has no fd %d", p.argv[0], n)
	}
	delete(p.fds, n)
	return fd
}

// pending is the set of signals sigs.
func pending(sigs ...syscall.Signal) ipc.Signals {
	var s ipc.Signals
	for _, sig := range sigs {
		s |= 1 << uint(sig)
	}
	return s
}

// After an upgrade the old master retires its children with hand-back and
// forwards what they give back, bytes and all, to the new master, which
// queues it to deal to its own children.
func TestUpgradeForwardsConnections(t *testing.T) {
	m, f, kids := upgradeMaster(t)
	m.upgrade()
	p := f.procs[m.upgradePid]
	newer := &Master{upgradeIn: ipc.NewChannel(p.fd(t, upgradeReadyFd)), log: m.log,
		fds: make([]int, 0, ipc.MaxFds), carried: map[int][]byte{}}
	defer newer.upgradeIn.Close()
	newer.poller, _ = epoll.Open()
	defer newer.poller.Close()
	newer.reportUpgraded()
	m.onUpgradeReady()
	if _, cmds := kids[0].take(t); len(cmds) != 1 || cmds[0] != ipc.CmdRetire {
		t.Fatalf("the old child was told %v, want retire (hand-back)", cmds)
	}
	plain, carried := conns(t, 1)[0], conns(t, 1)[0]
	want := inodes(t, []int{plain, carried})
	kids[0].far.Send(ipc.Msg{Cmd: ipc.CmdFds}, []int{plain})
	kids[0].far.SendConn(ipc.Msg{}, carried, []byte("GET /x HT"))
	m.onChannel(kids[0].kid, &epoll.Event{Events: epoll.In})
	m.dispatch()
	if len(m.queue) != 0 || m.forwarded != 2 {
		t.Fatalf("old master: %d queued, %d forwarded; want 0, 2", len(m.queue), m.forwarded)
	}
	newer.onHandover()
	if got := inodes(t, newer.queue); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("new master queued %v, want %v", got, want)
	}
	// Both are marked handed on, so the new children do not count them as
	// new connections; only the second carries bytes.
	if string(newer.carried[newer.queue[1]]) != "GET /x HT" || len(newer.carried[newer.queue[0]]) != 0 || len(newer.carried) != 2 {
		t.Fatalf("new master's carried bytes: %v", newer.carried)
	}
	for _, fd := range newer.queue {
		unix.Close(fd)
	}
}

// A stop ends once every child has been reaped. Children still running at
// the deadline (-grace for a graceful stop, fastStopWait for a fast one)
// are killed then, not before. Connections waiting for a new master's
// hand-over keep the master until the deadline.
func TestStopDeadline(t *testing.T) {
	const grace = 3 * time.Second
	for _, c := range []struct {
		kind stopKind
		wait time.Duration
	}{{graceful, grace}, {fast, fastStopWait}} {
		m, f, kids := newFakeMaster(t, 2, Config{Grace: grace})
		clk := withClock(m)
		start := clk.now()
		m.stop(c.kind)
		if m.stopDone(clk.add(c.wait)) {
			t.Fatalf("stop %d: stopped at the deadline with %d children running", c.kind, len(m.kids))
		}
		for _, k := range kids {
			if got := f.killed(k.pid); len(got) != 0 {
				t.Fatalf("stop %d: child %d sent %v before the deadline", c.kind, k.pid, got)
			}
		}
		if m.stopDone(clk.add(time.Millisecond)) {
			t.Fatalf("stop %d: stopped past the deadline before its children were reaped", c.kind)
		}
		for _, k := range kids {
			if got := f.killed(k.pid); !slices.Equal(got, []syscall.Signal{unix.SIGKILL}) {
				t.Errorf("stop %d: child %d sent %v past the deadline, want SIGKILL", c.kind, k.pid, got)
			}
		}
		m.reap()
		if !m.stopDone(clk.now()) {
			t.Errorf("stop %d: not stopped %v after it began, its children reaped (%d left)", c.kind, clk.now().Sub(start), len(m.kids))
		}
	}

	t.Run("hand-over", func(t *testing.T) {
		m, f, kids := newFakeMaster(t, 1, Config{Grace: grace})
		clk := withClock(m)
		m.stop(graceful)
		f.exit(kids[0].pid, exited(0))
		m.reap()
		m.queue = append(m.queue, conns(t, 1)...)
		m.handover = ipc.NewChannel(-1) // queued for a new master
		t.Cleanup(func() { m.handover = nil })
		if m.stopDone(clk.add(grace)) {
			t.Fatal("stopped with a connection waiting for the new master, before the deadline")
		}
		if !m.stopDone(clk.add(time.Millisecond)) {
			t.Fatal("not stopped past the deadline")
		}
	})
}

// The loop sleeps until the earliest thing due, and never past a second:
// a respawn, the stop's deadline, the end of an accept rest, a recheck of
// children at -max-conns.
func TestLoopTimeout(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(m *Master, now time.Time)
		want int
	}{
		{"nothing due", func(_ *Master, _ time.Time) {}, 1000},
		{"a respawn", func(m *Master, now time.Time) { m.slots[1].respawnAt = now.Add(300 * time.Millisecond) }, 301},
		{"a respawn past", func(m *Master, now time.Time) { m.slots[1].respawnAt = now.Add(-time.Second) }, 1000},
		{"the stop's deadline", func(m *Master, now time.Time) { m.stop(graceful); m.deadline = now.Add(50 * time.Millisecond) }, 51},
		{"the accept rest", func(m *Master, now time.Time) { m.rest.Until = now.Add(100 * time.Millisecond) }, 101},
		{"all children full", func(m *Master, _ time.Time) { m.allFull = true }, int(fullRecheck/time.Millisecond) + 1},
		{"the earliest of two", func(m *Master, now time.Time) {
			m.rest.Until = now.Add(100 * time.Millisecond)
			m.slots[0].respawnAt = now.Add(70 * time.Millisecond)
		}, 71},
		{"far off", func(m *Master, now time.Time) { m.slots[0].respawnAt = now.Add(time.Hour) }, 1000},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, _, _ := newFakeMaster(t, 2, Config{})
			clk := withClock(m)
			c.set(m, clk.now())
			if got := m.timeout(); got != c.want {
				t.Errorf("timeout %d ms, want %d", got, c.want)
			}
		})
	}
}

// What a child says decides what the master does with it: a child that
// drains on a signal of its own is dealt nothing more and replaced at once;
// a child that sends a malformed message is killed and replaced.
func TestChildMessages(t *testing.T) {
	hear := func(m *Master, k testKid) {
		m.onChannel(k.kid, &epoll.Event{Events: epoll.In, Fd: int32(k.ch.Fd)})
	}
	t.Run("draining on its own", func(t *testing.T) {
		m, f, kids := newFakeMaster(t, 2, Config{})
		clk := withClock(m)
		k := kids[0]
		if err := k.far.Send(ipc.Msg{Cmd: ipc.CmdDraining, Pid: int32(k.pid), Slot: 0}, nil); err != nil {
			t.Fatal(err)
		}
		hear(m, k)
		if k.state != draining || slices.Contains(m.targets, k.kid) {
			t.Fatalf("child state %v, still a target %v; want draining and dealt nothing", k.state, slices.Contains(m.targets, k.kid))
		}
		m.maintain(clk.now())
		if r := kidOf(m, 0); r == nil || r == k.kid || r.state != starting {
			t.Fatalf("slot 0 after the drain: %+v, want a replacement starting", r)
		}
		if got := f.killed(k.pid); len(got) != 0 {
			t.Errorf("the draining child was sent %v; it finishes its work", got)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		m, f, kids := newFakeMaster(t, 2, Config{})
		clk := withClock(m)
		k := kids[0]
		if _, err := unix.Write(k.far.Fd, []byte{1, 2, 3}); err != nil { // shorter than any message
			t.Fatal(err)
		}
		hear(m, k)
		if got := f.killed(k.pid); !slices.Equal(got, []syscall.Signal{unix.SIGKILL}) {
			t.Fatalf("a child that sent a malformed message was sent %v, want SIGKILL", got)
		}
		if slices.Contains(m.targets, k.kid) {
			t.Fatal("the broken child is still dealt connections")
		}
		m.reap()
		m.maintain(clk.now())
		if r := kidOf(m, 0); r == nil || r == k.kid {
			t.Fatalf("slot 0 after the kill: %+v, want a replacement", r)
		}
	})
}
