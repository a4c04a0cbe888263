package master

import (
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

const (
	// maxAccept bounds one accept burst so signals and children are heard
	// between bursts under a flood.
	maxAccept = 256
	// maxQueue is how many accepted connections may wait in the master when
	// every child's channel is full; past it the master stops accepting and
	// lets the kernel's backlog hold the rest.
	maxQueue = 1024
	// fullRecheck is how often a master whose children are all at MaxConns
	// looks whether one has room again.
	fullRecheck = 10 * time.Millisecond
)

// accept takes every pending connection (up to maxAccept) into the queue.
func (m *Master) accept() {
	for i := 0; i < maxAccept && len(m.queue) < maxQueue; i++ {
		fd, err := ipc.Accept(m.lfd)
		switch err {
		case nil:
			m.queue = append(m.queue, fd)
			continue
		case unix.EINTR, unix.ECONNABORTED:
			continue // the client gave up while queued; take the next one
		case unix.EAGAIN:
		case unix.EMFILE, unix.ENFILE:
			m.rest.Begin(m.now(), m.log, err)
		default:
			m.log.Error("accept", "err", err)
		}
		return
	}
}

// dispatch deals the queued connections round-robin to the target children
// and sends each child its share in as few messages as possible. A child
// whose channel is full is skipped; its share goes to the next. What no
// child can take stays queued for a later turn.
func (m *Master) dispatch() {
	if m.handover != nil {
		m.forward() // upgraded: the new master deals them
		return
	}
	var sentFds [maxAccept]int // the master's copies of what was sent, to close
	sent := sentFds[:0]
	for len(m.queue) > 0 {
		dealt := 0
		for _, fd := range m.queue {
			k := m.next()
			if k == nil {
				break
			}
			k.batch = append(k.batch, fd)
			dealt++
		}
		if dealt == 0 {
			break
		}
		m.queue = append(m.queue[:0], m.queue[dealt:]...)
		returned := false
		for _, k := range m.targets {
			if len(k.batch) > 0 {
				var back bool
				sent, back = m.sendTo(k, sent)
				returned = returned || back
			}
		}
		if !returned {
			break
		}
	}
	closeSent(sent)
}

// closeSent closes the master's copies of the fds it has sent and returns
// fds emptied. Fds accepted in one burst are mostly consecutive numbers (the
// kernel gives the lowest free ones, and the last burst's were closed), and
// then one close_range closes them all: one call per burst instead of one
// per connection. It is used only when fds is exactly the range (distinct
// fds, as many as the range holds), so that nothing else is closed.
func closeSent(fds []int) []int {
	if len(fds) > 1 {
		lo, hi := fds[0], fds[0]
		for _, fd := range fds {
			lo, hi = min(lo, fd), max(hi, fd)
		}
		if hi-lo+1 == len(fds) && unix.CloseRange(uint(lo), uint(hi), 0) == nil {
			return fds[:0]
		}
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	return fds[:0]
}

// next picks the target child for the next connection: round-robin, or the
// one with the fewest outstanding connections (ties round-robin), among those
// that can take it.
func (m *Master) next() *kid {
	n := len(m.targets)
	if m.cfg.Dispatch == DispatchLeast {
		var best *kid
		var load uint64
		at := 0
		for i := 0; i < n; i++ {
			k := m.targets[(m.rr+i)%n]
			if !m.canTake(k) {
				continue
			}
			if l := m.outstanding(k); best == nil || l < load {
				best, load, at = k, l, i
			}
		}
		m.rr += at + 1
		return best
	}
	for range m.targets {
		k := m.targets[m.rr%n]
		m.rr++
		if m.canTake(k) {
			return k
		}
	}
	return nil
}

// canTake reports whether k may be dealt a connection now: its channel has
// room, it is not stalled, and it is below -max-conns.
func (m *Master) canTake(k *kid) bool {
	return !k.full && !k.h.stalled.Load() && m.hasRoom(k)
}

// sendTo delivers k.batch and appends what it sent to sent, the master's
// copies that the caller closes (closing them first when sent is full). It
// reports whether some fds could not be sent; those go back to the queue.
func (m *Master) sendTo(k *kid, sent []int) ([]int, bool) {
	if len(k.batch) > 0 && m.backlog(k) == 0 {
		// It owed nothing until now: the stall clock starts here.
		k.h.progressAt.Store(m.now().UnixNano())
	}
	m.sendCarried(k) // connections with bytes go one a message; a full channel sets k.full
	b := k.batch
	for len(b) > 0 && !k.full {
		n := min(len(b), ipc.MaxFds)
		err := k.ch.Send(ipc.Msg{Cmd: ipc.CmdFds, Pid: int32(k.pid), Slot: int32(k.slot)}, b[:n])
		if err != nil {
			if err != ipc.ErrAgain {
				m.log.Error("send to child", "pid", k.pid, "err", err)
			}
			// Full (or broken, and about to be reaped): skip it until its
			// channel drains.
			k.full = true
			m.poller.Rearm(k.ch.Fd, epoll.In|epoll.Out)
			break
		}
		// The child holds its own references now.
		if len(sent)+n > cap(sent) {
			sent = closeSent(sent)
		}
		sent = append(sent, b[:n]...)
		k.h.sent.Add(uint64(n))
		b = b[n:]
	}
	m.queue = append(m.queue, b...)
	k.batch = k.batch[:0]
	return sent, len(b) > 0
}

// updateAccepting keeps the listening socket in the poll set only while
// there is somewhere to put new connections.
func (m *Master) updateAccepting(now time.Time) {
	want := !m.stopBegun() && m.lfd >= 0 && m.cfg.Mode == ModeFdpass &&
		len(m.queue) < maxQueue && !now.Before(m.rest.Until) && m.anyRoom()
	if want == m.accepting {
		return
	}
	var err error
	if want {
		err = m.poller.Add(m.lfd, epoll.In)
	} else {
		err = m.poller.Delete(m.lfd)
	}
	if err != nil {
		m.log.Error("listener poll registration", "err", err)
		return
	}
	m.accepting = want
}

// anyRoom reports whether some target child can take a connection. When
// none can, the master leaves new connections in the kernel's backlog rather
// than accept them with nowhere to go; the loop looks again every
// fullRecheck, since children do not announce closes.
func (m *Master) anyRoom() bool {
	m.allFull = false
	for _, k := range m.targets {
		if m.canTake(k) {
			return true
		}
	}
	m.allFull = len(m.targets) > 0
	return false
}
