package master

import (
	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Hand-over at an upgrade. The old master starts the new one with a
// SOCK_SEQPACKET channel (fd 4 in the new master) instead of a bare pipe. The
// new master writes readyByte on it once its children serve, as before, and
// keeps it open. The old master then retires its children with hand-back,
// like at a reload, and forwards every connection they give back (with the
// bytes already read from it) over the channel; the new master deals them to
// its children. If the new master never gets ready, nothing has moved: the
// old generation keeps its connections and goes on serving.

// forward sends the queued connections to the new master, in order, in
// batches, a connection with bytes in a message of its own. A full channel
// leaves the rest queued and wakes the loop when it has room; a broken one
// (the new master died) closes what is left: there is no one to serve it.
func (m *Master) forward() {
	msg := ipc.Msg{Cmd: ipc.CmdFds, Pid: int32(m.pid)}
	for len(m.queue) > 0 {
		n, err := 1, error(nil)
		if data := m.carried[m.queue[0]]; len(data) > 0 {
			err = m.handover.SendConn(msg, m.queue[0], data)
		} else {
			for n < len(m.queue) && n < ipc.MaxFds && len(m.carried[m.queue[n]]) == 0 {
				n++
			}
			err = m.handover.Send(msg, m.queue[:n])
		}
		switch {
		case err == ipc.ErrAgain:
			if !m.handoverWait {
				m.handoverWait = m.poller.Add(m.handover.Fd, epoll.Out) == nil
			}
			return
		case err != nil:
			m.log.Error("upgrade: the new master no longer takes connections; closing those left", "err", err,
				"connections", len(m.queue))
			for _, fd := range m.queue {
				m.forget(fd)
			}
			m.queue = m.queue[:0]
			m.handover.Close()
			m.handover = nil
			return
		}
		for _, fd := range m.queue[:n] {
			m.forget(fd) // the new master holds its own reference now
		}
		m.forwarded += n
		m.queue = m.queue[n:]
	}
}

// onHandoverRoom is the wake-up of a full hand-over channel: the loop's
// next dispatch forwards the rest.
func (m *Master) onHandoverRoom() {
	m.poller.Delete(m.handover.Fd)
	m.handoverWait = false
}

// onHandover, in a new master, takes the connections the old one forwards.
// EOF means the old master is gone.
func (m *Master) onHandover() {
	for i := 0; i < maxChannelMsgs; i++ {
		msg, fds, err := m.upgradeIn.Recv(m.fds)
		switch {
		case err == ipc.ErrAgain:
			return
		case err == ipc.ErrBadMsg || err == ipc.ErrTruncated:
			m.log.Error("upgrade: malformed message from the old master", "err", err)
			continue
		case err != nil: // EOF: the old master has gone
			m.poller.Delete(m.upgradeIn.Fd)
			m.upgradeIn.Close()
			m.upgradeIn = nil
			if m.adopted > 0 {
				m.log.Info("upgrade: took over the old generation's connections", "connections", m.adopted)
			}
			return
		}
		if len(fds) == 0 {
			continue
		}
		var carried []byte
		if msg.Cmd == ipc.CmdConn {
			carried = m.upgradeIn.Data()
		}
		for _, fd := range fds {
			m.carried[fd] = keep(carried) // handed on: not a new connection for our children
			m.queue = append(m.queue, fd)
		}
		m.adopted += len(fds)
	}
}

// reportUpgraded tells the old master, in a master started by an upgrade,
// that its children serve; the channel stays open for the connections.
func (m *Master) reportUpgraded() {
	if m.upgradeIn == nil {
		return
	}
	if _, err := unix.Write(m.upgradeIn.Fd, []byte{readyByte}); err != nil {
		m.log.Error("upgrade: cannot tell the old master", "err", err)
	}
}
