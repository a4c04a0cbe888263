package master

import (
	"fmt"
	"syscall"
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

type kidState uint8

const (
	starting kidState = iota // spawned, not yet ready
	ready                    // serving
	draining                 // told to finish and exit
)

var stateNames = [...]string{starting: "starting", ready: "ready", draining: "draining"}

func (s kidState) String() string { return stateNames[s] }

// kid is one child process as the master sees it.
type kid struct {
	pid, slot, gen, cpu int
	ch                  *ipc.Channel // the master's end
	// peer is the child's end of the channel. The master keeps it open so
	// that, if the child dies, the connections still queued for it can be
	// taken back out of the socket and given to another child.
	peer    int
	state   kidState
	started time.Time
	batch   []int // fds dealt to this child in this turn
	full    bool  // its channel returned EAGAIN; wait for EPOLLOUT
	killed  bool
	hung    bool // killed by the watchdog
	cell    int  // its counters: a cell of m.stats, shared with it alone
	h       health
	// stalledAt is when the current stall began (unix ns); warned, whether
	// it was logged.
	stalledAt int64
	warned    bool
	// retireBy is when a retired child must be gone; handedBack counts the
	// connections it sent back.
	retireBy   time.Time
	handedBack int
	// Recycling (recycle.go): its limits, why it is being replaced, and why
	// the child it replaced was.
	lim      limits
	recycle  string
	replaces string
}

func (k *kid) closeChannel() {
	if k.ch != nil {
		k.ch.Close()
		k.ch = nil
	}
	if k.peer >= 0 {
		unix.Close(k.peer)
		k.peer = -1
	}
}

// slotState is the respawn bookkeeping of one slot of the pool.
type slotState struct {
	failures      int       // quick deaths in a row
	respawnAt     time.Time // zero: spawn when missing
	fatal         bool      // a child exited with status 2: do not respawn
	watchdogKills uint64    // children of this slot the watchdog killed
}

const (
	backoffBase = 100 * time.Millisecond
	backoffMax  = 5 * time.Second
	// spawnGap spaces the spawns of one slot whose children die after
	// serving for a while (killed, or crashing on some request): at most
	// five a second, however fast they die.
	spawnGap = 200 * time.Millisecond
	// quickDeath: a child that dies sooner than this after it was started
	// is a crash loop in the making (a broken binary, config, environment
	// or first request), and its slot backs off exponentially.
	quickDeath = 2 * time.Second
)

func (m *Master) setWorkers(n int) {
	n = max(n, 1)
	for len(m.slots) < n {
		m.slots = append(m.slots, slotState{})
	}
	m.slots = m.slots[:n]
}

// maintain starts a child in every slot of the current generation that has
// none, once its backoff has passed.
func (m *Master) maintain(now time.Time) {
	m.checkCells()
	for slot := range m.slots {
		st := &m.slots[slot]
		if m.hasKid(slot, m.gen) {
			st.respawnAt = time.Time{}
			continue
		}
		if st.fatal || now.Before(st.respawnAt) {
			continue
		}
		st.respawnAt = time.Time{}
		if err := m.spawn(slot); err != nil {
			m.log.Error("spawn failed", "slot", slot, "err", err)
			m.backoff(st, now)
		}
	}
	if !m.anyAlive() && m.allFatal() {
		m.log.Error("every child failed fatally; stopping")
		m.childrenFailed = true
		m.stop(fast)
	}
}

func (m *Master) hasKid(slot, gen int) bool {
	for _, k := range m.kids {
		if k.slot == slot && k.gen == gen && k.state != draining && k.recycle == "" {
			return true
		}
	}
	return false
}

func (m *Master) anyAlive() bool { return len(m.kids) > 0 }

func (m *Master) allFatal() bool {
	for _, st := range m.slots {
		if !st.fatal {
			return false
		}
	}
	return true
}

func (m *Master) backoff(st *slotState, now time.Time) {
	st.failures++
	d := backoffBase << min(st.failures-1, 10)
	st.respawnAt = now.Add(min(d, backoffMax))
}

// spawn starts a child for slot in the current generation: the same binary,
// re-executed, with what contract.go lists.
func (m *Master) spawn(slot int) error {
	mfd, cfd, err := ipc.Pair()
	if err != nil {
		return err
	}
	cpu := -1
	if m.cfg.Affinity && len(m.cpus) > 0 {
		cpu = m.cpus[slot%len(m.cpus)]
	}
	cell, ok := m.allocCell()
	if !ok {
		unix.Close(mfd)
		unix.Close(cfd)
		return errNoCell
	}
	files, env := childStart(slot, m.gen, cell, m.addr, m.null, cfd, m.stats.Fd(cell))
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: m.cfg.Credential},
	}
	// /proc/self/exe is this master's own binary even if the file on disk
	// was replaced since: children always run the master's code.
	argv := append([]string{fmt.Sprintf("procpool: child %d gen %d", slot, m.gen)}, m.cfg.Args...)
	pid, err := m.sys.start(cpu, m.cfg.SchedBatch, "/proc/self/exe", argv, attr)
	if err != nil {
		unix.Close(mfd)
		unix.Close(cfd)
		m.freeCells = append(m.freeCells, cell)
		return err
	}
	k := &kid{pid: pid, slot: slot, gen: m.gen, cpu: cpu, ch: ipc.NewChannel(mfd), peer: cfd,
		state: starting, started: m.now(), cell: cell, lim: m.drawLimits()}
	k.h.progressAt.Store(k.started.UnixNano())
	if err := m.poller.Add(mfd, epoll.In); err != nil {
		// Without its channel the child is useless; it will see EOF and exit.
		m.sys.kill(pid, unix.SIGKILL)
		k.closeChannel()
		m.kids = append(m.kids, k) // still reaped through SIGCHLD
		k.state = draining
		return err
	}
	m.kids = append(m.kids, k)
	m.publish()
	m.log.Info("child spawned", "pid", pid, "slot", slot, "gen", m.gen, "cpu", cpu)
	return nil
}

// reap collects every exited child. Only Wait4(-1, WNOHANG) is used, so no
// exit status is ever taken by anyone else.
func (m *Master) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := m.sys.wait(&ws)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if pid == m.upgradePid {
			m.upgradeExited(ws)
			continue
		}
		k := m.kidByPid(pid)
		if k == nil {
			m.log.Info("reaped a process that is not a child", append([]any{"pid", pid}, exitDesc(ws)...)...)
			continue
		}
		m.bury(k)
		expected := k.state == draining || m.stopBegun()
		args := append([]any{"pid", pid, "slot", k.slot, "gen", k.gen}, exitDesc(ws)...)
		switch {
		case expected:
			m.log.Info("child exited", args...)
		case k.hung:
			// The watchdog's kill: replace it at once, it did not crash.
			m.log.Warn("child killed by the watchdog replaced", args...)
		case ws.Exited() && ws.ExitStatus() == 2:
			m.log.Error("child failed fatally, not respawning its slot", args...)
			if k.slot < len(m.slots) && k.gen == m.gen {
				m.slots[k.slot].fatal = true
			}
		default:
			m.log.Warn("child died unexpectedly", args...)
			if k.slot < len(m.slots) && k.gen == m.gen {
				st := &m.slots[k.slot]
				now := m.now()
				if k.state == starting || now.Sub(k.started) < quickDeath {
					// It died before it could serve, or soon after: a broken
					// binary, config, environment or first request.
					// Retrying at once would only fork-storm.
					m.backoff(st, now)
					m.log.Warn("respawn backoff", "slot", k.slot, "failures", st.failures,
						"delay", st.respawnAt.Sub(now).Round(time.Millisecond))
				} else {
					st.failures = 0
					st.respawnAt = k.started.Add(spawnGap)
				}
			}
		}
	}
}

// bury forgets a dead child. Connections that were sent to it but never read
// are still queued in its end of the socketpair: take them back and deal them
// to the others.
func (m *Master) bury(k *kid) {
	if k.ch != nil {
		m.poller.Delete(k.ch.Fd)
		m.lastWords(k)
		k.ch.Close()
		k.ch = nil // takeBack must not send the dead child its commands again
	}
	if recovered := m.takeBack(k); recovered > 0 {
		m.log.Info("recovered connections of a dead child", "pid", k.pid, "fds", recovered)
	}
	k.closeChannel()
	m.releaseCell(k)
	for i, x := range m.kids {
		if x == k {
			m.kids = append(m.kids[:i], m.kids[i+1:]...)
			break
		}
	}
	m.retarget()
}

func (m *Master) kidByPid(pid int) *kid {
	for _, k := range m.kids {
		if k.pid == pid {
			return k
		}
	}
	return nil
}

func (m *Master) kidByChannel(fd int) *kid {
	for _, k := range m.kids {
		if k.ch != nil && k.ch.Fd == fd {
			return k
		}
	}
	return nil
}

// maxChannelMsgs bounds what the master reads from one child per turn, as
// maxAccept bounds an accept burst: a child that floods its channel cannot
// keep the master from the others. The channel is level-triggered; the
// rest waits for the next turn.
const maxChannelMsgs = 64

// onChannel reads what a child says, and notices a channel that has room
// again after being full.
func (m *Master) onChannel(k *kid, ev *epoll.Event) {
	if ev.Events&epoll.Out != 0 && k.full {
		k.full = false
		m.poller.Rearm(k.ch.Fd, epoll.In)
	}
	for i := 0; i < maxChannelMsgs && k.ch != nil; i++ {
		msg, fds, err := k.ch.Recv(m.fds)
		if len(fds) > 0 { // a CmdFds or CmdConn: connections handed back
			m.takeConns(k, msg, fds)
			continue
		}
		switch {
		case err == ipc.ErrAgain:
			return
		case err == ipc.ErrBadMsg || err == ipc.ErrTruncated:
			// Our own code at the other end sent nonsense: the child is
			// broken, and a silent hang is worse than a replacement.
			m.log.Error("child sent a malformed message; killing it", "pid", k.pid, "slot", k.slot, "err", err)
			for _, fd := range fds {
				unix.Close(fd)
			}
			m.poller.Delete(k.ch.Fd)
			m.sys.kill(k.pid, unix.SIGKILL)
			k.killed = true
			m.retire(k)
			return
		case err != nil:
			// EOF or a broken channel: the child is dying; SIGCHLD will tell.
			m.poller.Delete(k.ch.Fd)
			return
		}
		switch {
		case msg.Cmd == ipc.CmdReady && k.state == starting:
			k.state = ready
			m.log.Info("child ready", "pid", k.pid, "slot", k.slot, "gen", k.gen)
			m.replaced(k)
			m.retireOld()
			m.retarget()
		case msg.Cmd == ipc.CmdPing:
			// A stalled child answers: the loop's next look sees its progress.
		case msg.Cmd == ipc.CmdDraining && k.state != draining:
			// Someone sent the child SIGTERM: it finishes its work and exits,
			// and a replacement is started at once.
			m.log.Info("child draining on a signal of its own", "pid", k.pid, "slot", k.slot, "gen", k.gen)
			k.state = draining
			m.takeBack(k)
			m.retarget()
		}
	}
}

// retireOld drains the previous generations once every slot of the current
// one has a ready child, so a reload never leaves a moment without servers.
func (m *Master) retireOld() {
	for slot := range m.slots {
		if !m.hasReady(slot, m.gen) {
			return
		}
	}
	for _, k := range m.kids {
		if k.gen < m.gen && k.state != draining || k.gen == m.gen && k.slot >= len(m.slots) && k.state != draining {
			m.retire(k)
		}
	}
	m.serving = m.gen
	switch {
	case m.announce:
		m.announce = false
		notifyReady()
		m.reportUpgraded() // after READY: the old master then hands MAINPID over
		if m.cfg.Ready != nil {
			m.cfg.Ready(m.addr)
		}
	case m.reloading:
		m.reloading = false
		m.log.Info("reload done", "gen", m.gen)
		notify("READY=1")
	}
}

func (m *Master) hasReady(slot, gen int) bool {
	for _, k := range m.kids {
		if k.slot == slot && k.gen == gen && k.state == ready {
			return true
		}
	}
	return false
}

// retire asks a child to finish its work and exit. What is still queued for
// it is taken back first and dealt to the serving children, which also
// leaves room in its channel for the drain command itself. During a stop
// there is no one else to serve it: the child keeps its queue and serves it.
func (m *Master) retire(k *kid) {
	k.state = draining
	m.log.Info("child draining", "pid", k.pid, "slot", k.slot, "gen", k.gen)
	cmd, arg := m.retireCmd()
	if cmd == ipc.CmdRetire {
		m.takeBack(k)
		k.retireBy = m.now().Add(m.cfg.Grace + retireSlack)
	}
	m.tellArg(k, cmd, arg)
	m.retarget()
}

// tell sends cmd to a child; when its channel is full or broken the same
// request goes as a signal, which the child handles the same way.
func (m *Master) tell(k *kid, cmd ipc.Cmd) { m.tellArg(k, cmd, 0) }

// tellArg is tell with the command's argument.
func (m *Master) tellArg(k *kid, cmd ipc.Cmd, arg uint32) {
	if k.ch != nil {
		err := k.ch.Send(ipc.Msg{Cmd: cmd, Pid: int32(m.pid), Slot: int32(k.slot), Arg: arg}, nil)
		if err == nil {
			return
		}
	}
	if cmd == ipc.CmdRetire {
		cmd = ipc.CmdDrain // a signal cannot ask for the hand-back: the child drains
	}
	if sig, ok := fallback[cmd]; ok {
		m.sys.kill(k.pid, sig)
	}
}

func (m *Master) tellAll(cmd ipc.Cmd) {
	for _, k := range m.kids {
		if cmd == ipc.CmdDrain {
			if k.state != draining {
				m.retire(k)
			}
			continue
		}
		m.tell(k, cmd)
	}
}

// retarget recomputes where new connections go: the ready children of the
// serving generation — the newest one all of whose children reported ready
// — or, until there is one, of the newest generation that has any; in slot
// order. During a graceful stop every child drains, and what the master
// still holds goes to them.
func (m *Master) retarget() {
	defer m.publish()
	m.targets = m.targets[:0]
	if m.stopping == graceful && m.handover == nil {
		for _, k := range m.kids {
			if k.state != starting && !k.killed {
				m.targets = append(m.targets, k)
			}
		}
		return
	}
	best := -1
	for _, k := range m.kids {
		if k.state == ready && k.gen == m.serving {
			best = k.gen
			break
		}
		if k.state == ready && k.gen > best {
			best = k.gen
		}
	}
	for slot := 0; best >= 0; slot++ {
		found, more := false, false
		for _, k := range m.kids {
			if k.gen == best && k.state == ready {
				if k.slot == slot {
					m.targets = append(m.targets, k)
					found = true
				} else if k.slot > slot {
					more = true
				}
			}
		}
		if !found && !more {
			break
		}
	}
}

// reload re-reads the configuration and replaces the children with a new
// generation; the old one drains once the new one is ready.
func (m *Master) reload() {
	defer m.noteReload()() // the outcome, for procpool -s reload (control.go)
	if m.cfg.Reload != nil {
		cfg, err := m.cfg.Reload()
		if err != nil {
			m.log.Error("reload rejected, keeping the running configuration", "err", err)
			return
		}
		if cfg.Listen != m.cfg.Listen || cfg.Mode != m.cfg.Mode {
			m.log.Error("reload rejected: listen and mode change only with a restart or an upgrade",
				"listen", cfg.Listen, "mode", cfg.Mode)
			return
		}
		cfg.setDefaults()
		m.cfg.takeReloadable(&cfg)
	}
	m.gen++
	m.setWorkers(m.cfg.Workers)
	for i := range m.slots {
		m.slots[i] = slotState{}
	}
	m.log.Info("reload begun", "gen", m.gen, "workers", len(m.slots))
	notify("RELOADING=1")
	m.reloading = true
	m.maintain(m.now())
}

// resize changes the number of slots by SIGTTIN/SIGTTOU.
func (m *Master) resize(n int) {
	if n < 1 {
		return
	}
	m.setWorkers(n)
	m.cfg.Workers = n
	m.log.Info("workers changed", "workers", n)
	for _, k := range m.kids {
		if k.slot >= n && k.state != draining {
			m.retire(k)
		}
	}
}

// takeReloadable copies from n what a reload changes: what the pool is made
// of and how connections are dealt to it. How the master listens, logs and
// is controlled stays as it started. n has its defaults set.
// TestReloadableFields fails for a Config field nobody decided about.
func (c *Config) takeReloadable(n *Config) {
	c.Workers, c.Affinity, c.SchedBatch, c.Args = n.Workers, n.Affinity, n.SchedBatch, n.Args
	c.Grace = n.Grace
	// The master admits connections for the children by -max-conns
	// (fdpass), so it must follow the children's new limit.
	c.MaxConns = n.MaxConns
	c.Dispatch, c.Stall, c.Watchdog = n.Dispatch, n.Stall, n.Watchdog
	c.MaxRequests, c.MaxLifetime, c.MaxRSS, c.RecycleJitter = n.MaxRequests, n.MaxLifetime, n.MaxRSS, n.RecycleJitter
}
