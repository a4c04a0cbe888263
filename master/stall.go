package master

import (
	"sync/atomic"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Stall-aware dispatch.
//
// The master knows what it sent each child (sent); each child publishes in
// its stats cell how many connections it took off its channel (Accepted), a
// heartbeat that its loop advances every turn (Turns) and the requests it
// answered (Requests). Sent minus taken is the child's backlog: connections
// waiting in its socketpair. A child with a backlog that has neither turned
// its loop nor answered a request for Config.Stall is stalled: its loop is
// blocked (a long inline handler, SIGSTOP, a page-fault storm, a GC that will
// not end). Answered requests count because one turn of a busy child may
// serve hundreds of events; a child working through them is not stuck. Dispatch skips it, and what is queued for it is taken
// back out of its socketpair (the master holds the child's end too, and
// SOCK_SEQPACKET hands each message to exactly one reader) and dealt to the
// others. A ping is left in its channel so that the child turns its loop as
// soon as it runs again; the first change of its heartbeat ends the stall.
//
// An idle child owes nothing, so no clock runs for it: an idle pool is
// never called stalled, however long its children sleep in epoll_wait.

// DefaultStall is how long a child with a backlog may go without a turn of
// its loop before the master deals around it. A healthy child takes a
// connection within microseconds of its arrival; on a busy machine it may
// wait a few scheduler time slices (CFS gives each runnable task a few ms),
// so 20 ms does not mistake a busy child for a stuck one, while a stuck
// child delays the few connections dealt to it in that time by 20 ms, not by
// the length of its stall.
const DefaultStall = 20 * time.Millisecond

// DefaultGrace is the grace period of a Config that sets none: what
// -grace defaults to.
const DefaultGrace = 10 * time.Second

// Dispatch orders.
const (
	DispatchRR    = "rr"    // round-robin over the serving children (the default)
	DispatchLeast = "least" // fewest outstanding connections (open + backlog), ties round-robin
)

// health is what the master knows of a child's progress. The loop writes it;
// the admin goroutines read it, hence the atomics.
type health struct {
	sent       atomic.Uint64 // connections it holds or has yet to take: sent minus taken back
	takenBack  atomic.Uint64 // connections taken back out of its channel
	progressAt atomic.Int64  // unix ns of the last sign of progress, or of owing nothing
	stalled    atomic.Bool
	turns      uint64 // the heartbeat at the last look
}

// judge applies the stall rule to one look at a child: its heartbeat and
// backlog now. It reports whether the child became stalled or resumed.
func (h *health) judge(turns, backlog uint64, now int64, stall time.Duration) (became, resumed bool) {
	if turns != h.turns {
		h.turns = turns
		h.progressAt.Store(now)
		if h.stalled.Load() {
			h.stalled.Store(false)
			return false, true
		}
		return false, false
	}
	switch {
	case h.stalled.Load():
	case backlog == 0:
		h.progressAt.Store(now) // owes nothing: no clock runs
	case stall > 0 && now-h.progressAt.Load() >= int64(stall):
		h.stalled.Store(true)
		return true, false
	}
	return false, false
}

// backlog is how many connections wait in k's channel.
func (m *Master) backlog(k *kid) uint64 {
	if k.cell < 0 || m.cfg.Mode != ModeFdpass {
		return 0
	}
	sent, taken := k.h.sent.Load(), m.stats.Cell(k.cell).Accepted.Load()
	if taken >= sent {
		return 0
	}
	return sent - taken
}

// beat is a child's sign of life: it changes whenever the child turns its
// loop or answers a request (both counters only grow).
func (m *Master) beat(k *kid) uint64 {
	c := m.stats.Cell(k.cell)
	return c.Turns.Load() + c.Requests.Load()
}

// observe looks at every child once: stalls begin and end, stalled
// children's queues are taken back, and the watchdog kills a child stalled
// for too long.
func (m *Master) observe(now time.Time) {
	ns := now.UnixNano()
	changed := false
	for _, k := range m.kids {
		if k.cell < 0 || k.killed {
			continue
		}
		became, resumed := k.h.judge(m.beat(k), m.backlog(k), ns, m.cfg.Stall)
		switch {
		case became:
			n := m.takeBack(k)
			m.tell(k, ipc.CmdPing)
			m.log.Debug("child stalled; dealing around it", "pid", k.pid, "slot", k.slot, "taken_back", n)
			changed = true
		case resumed:
			k.warned = false
			if d := time.Duration(ns - k.stalledAt); d >= time.Second {
				m.log.Warn("child resumed after a stall", "pid", k.pid, "slot", k.slot, "stalled", d.Round(time.Millisecond))
			}
			changed = true
		}
		if became {
			k.stalledAt = k.h.progressAt.Load()
		}
		if k.h.stalled.Load() {
			m.watch(k, ns)
		}
	}
	if changed {
		m.retarget()
	}
	m.overdue(now)
}

// watch warns once about a child stalled for a second, and kills one stalled
// for longer than Config.Watchdog, logging the request it is stuck in.
func (m *Master) watch(k *kid, now int64) {
	stalled := time.Duration(now - k.stalledAt)
	if stalled >= time.Second && !k.warned {
		k.warned = true
		m.log.Warn("child stalled", append([]any{"pid", k.pid, "slot", k.slot,
			"stalled", stalled.Round(time.Millisecond)}, m.stuck(k, now)...)...)
	}
	if m.cfg.Watchdog > 0 && stalled >= m.cfg.Watchdog {
		m.log.Error("watchdog: killing a stalled child", append([]any{"pid", k.pid, "slot", k.slot,
			"stalled", stalled.Round(time.Millisecond)}, m.stuck(k, now)...)...)
		m.sys.kill(k.pid, unix.SIGKILL)
		k.killed, k.hung = true, true
		if k.slot < len(m.slots) {
			m.slots[k.slot].watchdogKills++
		}
		m.publish()
	}
}

// stuck describes the request a child published as running, for a log line.
func (m *Master) stuck(k *kid, now int64) []any {
	method, path, start, ok := m.stats.Cell(k.cell).Current()
	if !ok {
		return []any{"request", "none"}
	}
	return append([]any{"method", method, "path", path, "request_age", time.Duration(now - start).Round(time.Millisecond)},
		clientDesc(m.stats.Cell(k.cell))...)
}

// takeBack takes every message still queued in k's channel out of the
// child's end: connections go back to the front of the master's queue (they
// are older than what it accepted since), commands are sent again so the
// child still gets them, in order. It returns how many connections it took.
func (m *Master) takeBack(k *kid) int {
	m.queue = append(m.queue, k.batch...)
	k.batch = k.batch[:0]
	if k.peer < 0 {
		return 0
	}
	m.peerCh.Fd = k.peer
	var cmds []ipc.Msg
	var taken []int
	for {
		msg, fds, err := m.peerCh.Recv(m.fds)
		if err == ipc.ErrBadMsg || err == ipc.ErrTruncated {
			continue // Recv closed what came with it
		}
		if err != nil {
			break // ErrAgain: nothing more is queued (or the channel is gone)
		}
		switch msg.Cmd {
		case ipc.CmdFds:
			taken = append(taken, fds...)
		case ipc.CmdConn:
			taken = append(taken, fds...)
			m.carried[fds[0]] = keep(m.peerCh.Data())
		case ipc.CmdPing:
		default:
			cmds = append(cmds, msg)
		}
	}
	if n := len(taken); n > 0 {
		m.queue = append(taken, m.queue...)
		k.h.sent.Add(^uint64(n - 1))
		k.h.takenBack.Add(uint64(n))
	}
	for _, c := range cmds {
		if k.ch != nil { // a dead child's pid may already be someone else's
			m.tellArg(k, c.Cmd, c.Arg)
		}
	}
	return len(taken)
}

// nextStallCheck is when observe must look again: the moment the oldest
// backlog of a child that shows no progress would make it stalled, or the
// watchdog's deadline for one that is.
func (m *Master) nextStallCheck(consider func(time.Time)) {
	for _, k := range m.kids {
		if k.cell < 0 || k.killed {
			continue
		}
		if !k.retireBy.IsZero() {
			consider(k.retireBy)
		}
		switch {
		case k.h.stalled.Load():
			if !k.warned {
				consider(time.Unix(0, k.stalledAt).Add(time.Second))
			}
			if m.cfg.Watchdog > 0 {
				consider(time.Unix(0, k.stalledAt).Add(m.cfg.Watchdog))
			}
		case m.cfg.Stall > 0 && m.backlog(k) > 0:
			consider(time.Unix(0, k.h.progressAt.Load()).Add(m.cfg.Stall))
		}
	}
}

// setDefaults fills in the dispatch settings a Config leaves zero.
func (c *Config) setDefaults() {
	switch {
	case c.Grace == 0:
		c.Grace = DefaultGrace
	case c.Grace < 0:
		c.Grace = 0
	}
	if c.Dispatch == "" {
		c.Dispatch = DispatchRR
	}
	switch {
	case c.Stall == 0:
		c.Stall = DefaultStall
	case c.Stall < 0:
		c.Stall = 0 // off: judge never calls a child stalled
	}
}
