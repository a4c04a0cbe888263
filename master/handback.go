package master

import (
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Hand-back.
//
// A retired child (reload, fewer workers, recycling) does not close its
// keep-alive connections: it finishes what is in flight and sends every
// connection that is idle between requests back over its channel, batched
// with SCM_RIGHTS, or one at a time with the bytes of a next request it had
// already read (CmdConn). The master queues them like connections it
// accepted and deals them to the serving children; a child that receives a
// CmdConn starts from the bytes that came with it. The client sees nothing:
// no close, no byte lost or read twice.
//
// A retired child that still holds a connection after the grace period closes
// it and exits; the master kills one that has not gone a second later.

// retireSlack is how long after its grace period a retired child may take to
// exit before the master kills it.
const retireSlack = time.Second

// takeConns takes the connections a child sent. Only a retired child hands
// connections back; from any other they are closed.
func (m *Master) takeConns(k *kid, msg ipc.Msg, fds []int) {
	if k.state != draining {
		m.log.Error("a serving child sent connections; closing them", "pid", k.pid, "slot", k.slot, "fds", len(fds))
		for _, fd := range fds {
			unix.Close(fd)
		}
		return
	}
	var carried []byte
	if msg.Cmd == ipc.CmdConn {
		carried = k.ch.Data()
	}
	for _, fd := range fds {
		m.handedBack(k, fd, carried)
	}
}

// handedBack takes a connection a retired child sent back. carried is what
// the child had already read from it; it is copied.
func (m *Master) handedBack(k *kid, fd int, carried []byte) {
	m.carried[fd] = keep(carried)
	m.queue = append(m.queue, fd)
	k.handedBack++
}

// sendCarried sends k the connections of its batch that were handed back
// (with the bytes they carry, if any), one message each, and leaves the
// others in the batch. It reports false when
// k's channel is full; what was not sent stays in the batch.
func (m *Master) sendCarried(k *kid) bool {
	if len(m.carried) == 0 {
		return true
	}
	rest := k.batch[:0]
	ok := true
	for _, fd := range k.batch {
		data, has := m.carried[fd]
		if !has || !ok {
			rest = append(rest, fd)
			continue
		}
		if err := k.ch.SendConn(ipc.Msg{Pid: int32(k.pid), Slot: int32(k.slot)}, fd, data); err != nil {
			ok = false
			rest = append(rest, fd)
			continue
		}
		delete(m.carried, fd)
		unix.Close(fd)
		k.h.sent.Add(1)
	}
	k.batch = rest
	if !ok {
		k.full = true
		m.poller.Rearm(k.ch.Fd, epoll.In|epoll.Out)
	}
	return ok
}

// lastWords reads what a dead child sent that the loop has not read yet:
// the connections it handed back on its way out are still in the master's
// end of the channel.
func (m *Master) lastWords(k *kid) {
	for {
		msg, fds, err := k.ch.Recv(m.fds)
		if err == ipc.ErrBadMsg || err == ipc.ErrTruncated {
			continue
		}
		if err != nil {
			return // ErrAgain or EOF: nothing more
		}
		if len(fds) > 0 {
			m.takeConns(k, msg, fds)
		}
	}
}

// keep copies what came with a handed-back connection. The copy is never
// nil: an entry in Master.carried marks a connection as handed back, bytes
// or none, so that its next child gets it as CmdConn and does not count it
// as a fresh one.
func keep(b []byte) []byte { return append(make([]byte, 0, len(b)), b...) }

// forget closes a queued connection that nobody will serve.
func (m *Master) forget(fd int) {
	delete(m.carried, fd)
	unix.Close(fd)
}

// retireCmd is how a child is asked to go: hand its connections back while
// some generation serves (here, or a new master's after an upgrade), close
// them when the whole server stops.
func (m *Master) retireCmd() (ipc.Cmd, uint32) {
	if m.stopBegun() && m.handover == nil {
		return ipc.CmdDrain, 0
	}
	return ipc.CmdRetire, uint32(min(m.cfg.Grace.Milliseconds(), 1<<31))
}

// overdue kills retired children that outlived their grace period.
func (m *Master) overdue(now time.Time) {
	for _, k := range m.kids {
		if k.state == draining && !k.retireBy.IsZero() && now.After(k.retireBy) && !k.killed {
			m.log.Warn("killing a retired child past its grace period", "pid", k.pid, "slot", k.slot, "gen", k.gen)
			m.sys.kill(k.pid, unix.SIGKILL)
			k.killed = true
		}
	}
}
