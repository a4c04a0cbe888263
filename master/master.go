// Package master is the supervising side of procpool: it owns the listening
// socket, accepts connections and hands them to children round-robin over
// their channels (fdpass mode), or leaves accepting to the children
// (reuseport mode); it spawns, pins, reaps and replaces children, and turns
// signals into actions in its own loop.
package master

import (
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/epoll/sched"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Modes of handing connections to children.
const (
	ModeFdpass    = "fdpass"
	ModeReuseport = "reuseport"
)

// Config is what the master runs with.
type Config struct {
	Listen   string // address to serve
	Workers  int    // number of children
	Mode     string // ModeFdpass or ModeReuseport
	Affinity bool   // pin child i to the i-th allowed CPU
	// SchedBatch starts children under SCHED_BATCH: a woken child waits for
	// the running task's time slice to end instead of preempting it.
	SchedBatch bool
	Backlog    int    // listen backlog; <= 0 for the kernel's maximum
	MaxConns   int    // most connections per child; 0: no limit
	Admin      string // address of the status listener (host:port or unix:/path); "" for none
	// Grace is how long a graceful stop (and a retired child) waits for
	// open requests: 0 means DefaultGrace, a negative value none (kill at
	// once).
	Grace time.Duration
	// ShutdownDelay: on SIGTERM or SIGQUIT the master reports not ready and
	// serves on, with Connection: close, for this long before the graceful
	// stop begins (ready.go).
	ShutdownDelay time.Duration
	// ListenMode is the file mode of a Unix-socket listener (Listen
	// "unix:PATH", fdpass mode only); 0 means DefaultListenMode.
	ListenMode os.FileMode
	// Args are the arguments a child is started with (argv[0] is added): the
	// effective settings, so a child never re-reads a config file that may
	// have changed since.
	Args []string
	Log  *slog.Logger
	// Reload re-reads the configuration on SIGHUP. nil keeps the current one.
	Reload func() (Config, error)
	// Ready, when set, is called with the bound address once the first
	// generation of children is ready to serve.
	Ready func(addr string)
	// ListenFd is an inherited socket to serve instead of binding Listen:
	// from an upgrade (the old master's) or from systemd socket activation.
	// 0 means none.
	ListenFd int
	// UpgradeFd, in a master started by an upgrade, is its end of the
	// channel to the old master (UpgradeChannel): it reports ready there,
	// then receives the old generation's connections. 0 means none.
	UpgradeFd int
	// Exe and MasterArgs start a new master on SIGUSR2: the binary on disk
	// and the command line this master was started with.
	Exe        string
	MasterArgs []string
	// Pidfile, when set, is handed over to the new master on an upgrade.
	Pidfile *Pidfile
	// Reopen reopens the master's log file on SIGUSR1.
	Reopen func() error
	// Credential, when set, is what children run as (-user).
	Credential *syscall.Credential
	// Dispatch is the order in which connections are dealt: DispatchRR
	// (the default) or DispatchLeast.
	Dispatch string
	// Stall is how long a child with a backlog may go without progress
	// before it is dealt nothing and its queue is taken back. 0 means
	// DefaultStall; a negative value turns the rule off.
	Stall time.Duration
	// Watchdog kills a child stalled for longer than this (0: never).
	Watchdog time.Duration
	// DeferAccept, in fdpass mode on TCP, sets TCP_DEFER_ACCEPT on the
	// listener: the master wakes for a connection only once its first bytes
	// have arrived (0: off; see tuneListener).
	DeferAccept time.Duration
	// Recycling: a child is replaced (replacement first, then hand-back)
	// once it has answered MaxRequests requests, lived MaxLifetime, or its
	// resident size reached MaxRSS bytes; each limit is lowered by up to
	// RecycleJitter (a fraction) per child. Zero: no such limit.
	MaxRequests   uint64
	MaxLifetime   time.Duration
	MaxRSS        int64
	RecycleJitter float64

	// AdminPublic lets Admin listen beyond loopback; it has no authentication.
	AdminPublic bool
}

type stopKind uint8

const (
	running stopKind = iota
	graceful
	fast
)

// Master is the state of a running master. One goroutine, locked to its OS
// thread, owns all of it.
type Master struct {
	cfg    Config
	log    *slog.Logger
	poller *epoll.Poller
	sig    *ipc.SelfPipe
	lfd    int // fdpass: the listening socket; reuseport: a bound, non-listening reservation
	addr   string
	null   int

	kids    []*kid
	targets []*kid // where new connections go, in round-robin order
	rr      int
	gen     int
	now     func() time.Time // the clock; tests of decisions set their own
	sys     system           // processes; tests of decisions set their own
	serving int              // the newest generation all of whose children were ready
	peerCh  *ipc.Channel     // reads the children's ends of channels, to take back
	carried map[int][]byte   // bytes already read from queued connections that were handed back
	nextRSS time.Time        // when recycle next reads the children's resident sizes
	slots   []slotState
	cpus    []int

	stats     *ipc.Stats
	freeCells []int
	nextCell  int
	retired   ipc.Snapshot // counts of children that are gone
	admin     *admin       // nil without -admin

	queue     []int // accepted fds not yet handed to a child
	accepting bool
	allFull   bool           // every target child is at MaxConns
	rest      ipc.AcceptRest // out of fds: accepting rests

	upgradePid      int
	upgradeFd       int // our end of the channel to a new master not yet ready, -1 when none
	upgradeDeadline time.Time
	// Hand-over (handover.go): in the old master, the channel to the new one
	// once it is ready; in a new master, the channel from the old one.
	handover     *ipc.Channel
	handoverWait bool // waiting for room in handover
	forwarded    int
	upgradeIn    *ipc.Channel
	adopted      int
	pid          int

	pending   ipc.Signals
	stopping  stopKind
	lb        lbState // readiness and the shutdown delay (ready.go)
	deadline  time.Time
	announce  bool // Ready not yet called
	reloading bool // a reload waits for its generation to be ready

	childrenFailed bool // every child failed fatally: Run returns ErrChildrenFailed

	events []epoll.Event
	fds    []int
	yield  sched.Yielder
}

// Run serves until a stop signal and returns nil after a clean stop. It
// owns the process while it runs; once it returns, the master's signals stay
// caught and are dropped, so that the process can exit in its own time.
func Run(cfg Config) error {
	// Children are forked from this thread: pinning (see forkExecPinned) and
	// PR_SET_PDEATHSIG both belong to it, so it must stay this goroutine's.
	runtime.LockOSThread()
	sched.SpareP()
	sealInherited()
	m, err := start(cfg)
	if err != nil {
		return err
	}
	defer m.close()
	return m.loop()
}

func start(cfg Config) (*Master, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers()
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeFdpass
	}
	cfg.setDefaults()
	raiseNofile(cfg.Log)
	m := &Master{cfg: cfg, log: cfg.Log, lfd: -1, null: -1, upgradeFd: -1, announce: true,
		events: make([]epoll.Event, 128), fds: make([]int, 0, ipc.MaxFds), cpus: allowedCPUs(),
		peerCh: ipc.NewChannel(-1), now: time.Now, sys: kernel, carried: map[int][]byte{}, pid: os.Getpid()}
	var err error
	if m.null, err = unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return nil, os.NewSyscallError("open /dev/null", err)
	}
	if m.stats, err = ipc.NewStats(); err != nil {
		m.close()
		return nil, err
	}
	if m.poller, err = epoll.Open(); err != nil {
		m.close()
		return nil, err
	}
	if m.sig, err = ipc.NewSelfPipe(signalList()...); err != nil {
		m.close()
		return nil, err
	}
	if err = m.poller.Add(m.sig.Fd(), epoll.In); err != nil {
		m.close()
		return nil, err
	}
	if cfg.UpgradeFd > 0 {
		m.upgradeIn = ipc.NewChannel(cfg.UpgradeFd)
		if err = m.poller.Add(cfg.UpgradeFd, epoll.In); err != nil {
			m.close()
			return nil, err
		}
	}
	switch {
	case cfg.ListenFd > 0:
		m.lfd, err = adopt(cfg.ListenFd, cfg.Mode, cfg.Backlog)
	case UnixPath(cfg.Listen) != "" && cfg.Mode == ModeReuseport:
		err = ErrUnixReuseport
	case UnixPath(cfg.Listen) != "":
		m.lfd, err = ListenUnix(UnixPath(cfg.Listen), cfg.ListenMode, cfg.Backlog)
	case cfg.Mode == ModeReuseport:
		m.lfd, err = reserve(cfg.Listen)
	default:
		m.lfd, err = Listen(cfg.Listen, cfg.Backlog, false)
	}
	if err != nil {
		m.close()
		return nil, err
	}
	if err = tuneListener(m.lfd, cfg); err != nil {
		m.close()
		return nil, err
	}
	if m.addr, err = localAddr(m.lfd); err != nil {
		m.close()
		return nil, err
	}
	m.setWorkers(cfg.Workers)
	if cfg.Admin != "" {
		if err := m.startAdmin(cfg.Admin); err != nil {
			m.close()
			return nil, err
		}
	}
	if cfg.Mode == ModeReuseport {
		if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req"); err == nil && string(b) == "0\n" {
			m.log.Info("net.ipv4.tcp_migrate_req is 0: a connection still queued on a retiring child's listener at a reload is reset; set it to 1 to have the kernel move it to a sibling")
		}
	}
	m.log.Info("master started", "pid", os.Getpid(), "listen", m.addr, "mode", cfg.Mode, "workers", cfg.Workers)
	return m, nil
}

// Addr is the address the master serves, with the port resolved.
func (m *Master) Addr() string { return m.addr }

func (m *Master) loop() error {
	for {
		m.observe(m.now())
		m.dispatch()
		m.handleSignals()
		now := m.now()
		m.lbTurn(now)
		if m.stopBegun() {
			if m.stopDone(now) {
				m.log.Info("master stopped")
				return m.stopErr()
			}
		} else {
			m.recycle(now)
			m.maintain(now)
			m.checkUpgrade(now)
		}
		m.updateAccepting(now)
		m.yield.Yield(now.UnixNano())

		n, err := m.poller.Wait(m.events, m.timeout())
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			ev := &m.events[i]
			switch fd := int(ev.Fd); {
			case fd == m.sig.Fd():
				m.pending |= m.sig.Drain()
			case fd == m.lfd && m.cfg.Mode == ModeFdpass:
				m.accept()
			case fd == m.upgradeFd:
				m.onUpgradeReady()
			case m.handover != nil && fd == m.handover.Fd:
				m.onHandoverRoom()
			case m.upgradeIn != nil && fd == m.upgradeIn.Fd:
				m.onHandover()
			default:
				if k := m.kidByChannel(fd); k != nil {
					m.onChannel(k, ev)
				}
			}
		}
	}
}

// handleSignals acts on pending signals in the order of the Signals table,
// like a priority list: first learn who died, then stop, then the rest,
// which a stopping master ignores (and one in its shutdown delay, but for
// what duringDelay lets through).
func (m *Master) handleSignals() {
	s := m.pending
	m.pending = 0
	for _, row := range Signals {
		if s.Has(row.Sig) && (row.evenStopping ||
			!m.stopBegun() && (!m.delaying() || duringDelay(s).Has(row.Sig))) {
			row.act(m)
		}
	}
}

// reopen reopens the master's logs and tells the children to reopen theirs.
func (m *Master) reopen() {
	m.log.Info("reopening logs")
	if m.cfg.Reopen != nil {
		if err := m.cfg.Reopen(); err != nil {
			m.log.Error("reopen logs", "err", err)
		}
	}
	// The master's stderr is the children's too, and is now the reopened
	// -log: each child gets it to put in place of its own. A child that
	// runs as -user could not open a root-owned log itself.
	for _, k := range m.kids {
		if k.ch == nil || k.ch.Send(ipc.Msg{Cmd: ipc.CmdReopen, Pid: int32(m.pid), Slot: int32(k.slot)}, []int{2}) != nil {
			m.tell(k, ipc.CmdReopen) // a full channel: the signal, and the child reopens what it can
		}
	}
}

// timeout is how long the loop may sleep before something is due.
func (m *Master) timeout() int {
	var due time.Time
	now := m.now()
	consider := func(t time.Time) {
		if t.After(now) && (due.IsZero() || t.Before(due)) {
			due = t
		}
	}
	if m.stopBegun() {
		consider(m.deadline)
	}
	consider(m.lbDue())
	for i := range m.slots {
		consider(m.slots[i].respawnAt)
	}
	consider(m.rest.Until)
	m.nextStallCheck(consider)
	m.nextRecycleCheck(consider)
	if m.allFull {
		consider(now.Add(fullRecheck))
	}
	if m.upgradeFd >= 0 {
		consider(m.upgradeDeadline)
	}
	if due.IsZero() {
		return 1000
	}
	ms := due.Sub(now).Milliseconds() + 1
	return int(max(0, min(ms, 1000)))
}

// stopDone takes a stop's turn: past the deadline it kills the children
// that are left, which the next reap counts out. It reports whether the
// master is done: no child is left, and no connection waits for a new
// master to take it (an upgrade's hand-over) unless the deadline has passed.
func (m *Master) stopDone(now time.Time) bool {
	if len(m.kids) == 0 && (len(m.queue) == 0 || m.handover == nil || now.After(m.deadline)) {
		return true
	}
	if now.After(m.deadline) {
		m.killAll()
	}
	return false
}

// fastStopWait is how long a fast stop (SIGINT) waits for the children it
// told to stop to exit before it kills them.
const fastStopWait = time.Second

// stopBegun reports whether a stop, graceful or fast, has begun.
func (m *Master) stopBegun() bool { return m.stopping != running }

// stop begins a graceful or fast stop; a fast stop may overrule a graceful one.
func (m *Master) stop(kind stopKind) {
	if m.stopping >= kind {
		return
	}
	first := !m.stopBegun()
	m.stopping = kind
	m.lb.ready.Store(false)
	if first && m.lb.until.IsZero() { // else the shutdown delay said it
		notify("STOPPING=1")
	}
	m.closeListener()
	if kind == fast {
		m.log.Info("fast stop")
		m.deadline = m.now().Add(fastStopWait)
		m.tellAll(ipc.CmdStop)
		return
	}
	if first {
		m.log.Info("graceful stop", "grace", m.cfg.Grace)
		m.deadline = m.now().Add(m.cfg.Grace)
	}
	m.dispatch() // connections already accepted still get served
	m.tellAll(ipc.CmdDrain)
	m.retarget() // what is taken back from a stalled child goes to the others
}

func (m *Master) closeListener() {
	if m.lfd < 0 {
		return
	}
	if m.accepting {
		m.poller.Delete(m.lfd)
		m.accepting = false
	}
	unix.Close(m.lfd)
	m.lfd = -1
}

func (m *Master) killAll() {
	for _, k := range m.kids {
		if !k.killed {
			m.log.Warn("killing child past the grace period", "pid", k.pid, "slot", k.slot)
			m.sys.kill(k.pid, unix.SIGKILL)
			k.killed = true
		}
	}
}

func (m *Master) close() {
	m.closeListener()
	for _, fd := range m.queue {
		m.forget(fd)
	}
	m.queue = nil
	for _, k := range m.kids {
		k.closeChannel()
	}
	if m.sig != nil {
		// A signal that arrives now (a supervisor's second SIGTERM) must not
		// kill a stopping master by its default action: the master's
		// signals stay caught, and dropped, until the process exits. The
		// catch-all subscribes before the self-pipe lets go, leaving no gap.
		signal.Notify(make(chan os.Signal, 1), signalList()...)
		m.sig.Close()
	}
	if m.poller != nil {
		m.poller.Close()
	}
	if m.null >= 0 {
		unix.Close(m.null)
	}
	if m.upgradeFd >= 0 {
		unix.Close(m.upgradeFd)
	}
	for _, ch := range []*ipc.Channel{m.handover, m.upgradeIn} {
		if ch != nil {
			ch.Close()
		}
	}
	if m.admin != nil {
		m.admin.stop()
	}
	if m.stats != nil {
		m.stats.Close()
	}
}

func signalList() []os.Signal {
	var l []os.Signal
	for _, s := range Signals {
		l = append(l, s.Sig)
	}
	return l
}

func exitDesc(ws syscall.WaitStatus) []any {
	if ws.Signaled() {
		return []any{"signal", ws.Signal().String()}
	}
	return []any{"status", ws.ExitStatus()}
}

// raiseNofile lifts the soft fd limit to the hard one: every connection is
// an fd, in the master for a moment and in a child for its life. Children
// inherit the raised limit.
func raiseNofile(log *slog.Logger) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur >= rl.Max {
		return
	}
	old := rl.Cur
	rl.Cur = rl.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot raise the fd limit", "soft", old, "hard", rl.Max, "err", err)
	}
}
