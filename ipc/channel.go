package ipc

import (
	"errors"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrAgain means the channel cannot take or give a message right now: the
// peer's queue is full (send) or empty (receive). Wait for readiness and retry.
var ErrAgain = errors.New("ipc: channel would block")

// ErrTruncated reports a message whose control data did not fit (MSG_CTRUNC) or
// whose payload was cut (MSG_TRUNC). Every fd that did arrive has been closed.
var ErrTruncated = errors.New("ipc: channel message truncated")

// Pair creates a channel socketpair. Both ends are non-blocking and
// close-on-exec; the caller hands one end to the child as an extra file (exec
// clears close-on-exec on those).
func Pair() (master, child int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX,
		unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, os.NewSyscallError("socketpair", err)
	}
	return fds[0], fds[1], nil
}

// Channel is one end of a socketpair with the buffers that sending and
// receiving reuse, so neither allocates. A Channel is used by one goroutine.
type Channel struct {
	Fd  int
	buf [msgSize + MaxData]byte
	n   int // size of the last message received
	oob []byte
}

// NewChannel wraps fd. The Channel does not own fd until Close is called.
func NewChannel(fd int) *Channel {
	return &Channel{Fd: fd, oob: make([]byte, unix.CmsgSpace(MaxFds*4))}
}

// Close closes the underlying fd.
func (c *Channel) Close() error { return unix.Close(c.Fd) }

// Send sends m. With fds, m.Cmd must be CmdFds; the fds are attached and m.Arg
// set to their count. The caller keeps its copies of the fds open until Send
// returns and closes them afterwards whatever the outcome: on success the
// peer holds its own references. A full channel gives ErrAgain and sends
// nothing.
func (c *Channel) Send(m Msg, fds []int) error {
	switch {
	case len(fds) > MaxFds, m.Cmd == CmdConn,
		m.Cmd == CmdFds && len(fds) == 0,
		m.Cmd == CmdReopen && len(fds) > 1, // the log file, when it comes along
		m.Cmd != CmdFds && m.Cmd != CmdReopen && len(fds) > 0:
		return ErrBadMsg
	}
	if m.Cmd == CmdFds || m.Cmd == CmdReopen {
		m.Arg = uint32(len(fds)) // other commands keep theirs (CmdRetire's grace)
	}
	return c.send(m, fds, nil)
}

// SendConn sends one connection with the bytes already read from it (at
// most MaxData), as CmdConn. Ownership of fd is as for Send.
func (c *Channel) SendConn(m Msg, fd int, data []byte) error {
	if len(data) > MaxData {
		return ErrBadMsg
	}
	m.Cmd, m.Arg = CmdConn, uint32(len(data))
	copy(c.buf[msgSize:], data)
	return c.send(m, []int{fd}, c.buf[:msgSize+len(data)])
}

// Data is what came after the header of the last message Recv returned
// (a CmdConn's bytes); it is valid until the next Recv.
func (c *Channel) Data() []byte { return c.buf[msgSize:c.n] }

// send sends m with fds attached; payload, when given, is the whole message
// (header and data) already in c.buf.
func (c *Channel) send(m Msg, fds []int, payload []byte) error {
	if payload == nil {
		payload = c.buf[:msgSize]
	}
	m.marshal(c.buf[:])
	var oob []byte
	if len(fds) > 0 {
		oob = c.oob[:unix.CmsgSpace(len(fds)*4)]
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level = unix.SOL_SOCKET
		h.Type = unix.SCM_RIGHTS
		h.SetLen(unix.CmsgLen(len(fds) * 4))
		data := oob[unix.CmsgLen(0):]
		for i, fd := range fds {
			*(*int32)(unsafe.Pointer(&data[i*4])) = int32(fd)
		}
	}
	for {
		_, err := sendmsg(c.Fd, payload, oob, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return ErrAgain
		}
		return os.NewSyscallError("sendmsg", err)
	}
}

// Recv receives one message. Any fds that came with it are appended to
// fds[:0] and returned; they are close-on-exec and now belong to the caller.
// Recv returns ErrAgain when nothing is queued and io.EOF when the peer has
// closed its end. On any other error no fd is returned and none is leaked.
func (c *Channel) Recv(fds []int) (Msg, []int, error) {
	fds = fds[:0]
	for {
		n, oobn, flags, err := recvmsg(c.Fd, c.buf[:], c.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return Msg{}, fds, ErrAgain
		default:
			return Msg{}, fds, os.NewSyscallError("recvmsg", err)
		}
		// Collect what arrived before judging it, so that every error path
		// below can close it.
		fds = parseRights(c.oob[:oobn], fds)
		if n == 0 && oobn == 0 {
			return Msg{}, fds, io.EOF
		}
		if flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 {
			return Msg{}, closeAll(fds), ErrTruncated
		}
		if n < msgSize {
			return Msg{}, closeAll(fds), ErrBadMsg
		}
		m, err := unmarshal(c.buf[:msgSize])
		withFds := m.Cmd == CmdFds || m.Cmd == CmdConn
		switch {
		case err != nil, withFds != (len(fds) > 0) && m.Cmd != CmdReopen,
			m.Cmd == CmdFds && int(m.Arg) != len(fds),
			m.Cmd == CmdReopen && (len(fds) > 1 || int(m.Arg) != len(fds)),
			m.Cmd == CmdConn && (len(fds) != 1 || int(m.Arg) != n-msgSize),
			m.Cmd != CmdConn && n != msgSize:
			return Msg{}, closeAll(fds), ErrBadMsg
		}
		c.n = n
		return m, fds, nil
	}
}

// parseRights appends the fds of every SCM_RIGHTS control message in oob.
// Only oob[:oobn] is ever looked at; a malformed header ends the walk.
func parseRights(oob []byte, fds []int) []int {
	hdr := unix.CmsgLen(0)
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			data := oob[hdr:l]
			for i := 0; i+4 <= len(data); i += 4 {
				fds = append(fds, int(*(*int32)(unsafe.Pointer(&data[i]))))
			}
		}
		next := unix.CmsgSpace(l - hdr)
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return fds
}

func closeAll(fds []int) []int {
	for _, fd := range fds {
		unix.Close(fd)
	}
	return fds[:0]
}

// sendmsg and recvmsg call the kernel directly with a msghdr on the stack:
// the x/sys wrappers build a Sockaddr for every received message, which would
// allocate on the child's hot path. Channels are non-blocking, so the calls
// are raw: no scheduler bookkeeping for a call that cannot sleep.
func sendmsg(fd int, p, oob []byte, flags int) (int, error) {
	n, _, _, err := msgCall(unix.SYS_SENDMSG, fd, p, oob, flags)
	return n, err
}

func recvmsg(fd int, p, oob []byte, flags int) (n, oobn, rflags int, err error) {
	return msgCall(unix.SYS_RECVMSG, fd, p, oob, flags)
}

// msgCall makes trap (SYS_SENDMSG or SYS_RECVMSG) with one iovec over p and
// oob, when not empty, as the control buffer, and returns what the kernel
// wrote back into the header. The header and the iovec stay on this frame:
// only their address, as a uintptr, reaches the call, so neither escapes.
func msgCall(trap uintptr, fd int, p, oob []byte, flags int) (n, oobn, rflags int, err error) {
	var iov unix.Iovec
	iov.Base = &p[0]
	iov.SetLen(len(p))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.Iovlen = 1
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if e != 0 {
		return 0, 0, 0, errnoErr(e)
	}
	return int(r), int(msg.Controllen), int(msg.Flags), nil
}

// errnoErr returns the common errnos as the values callers compare against.
func errnoErr(e syscall.Errno) error {
	switch e {
	case unix.EAGAIN:
		return unix.EAGAIN
	case unix.EINTR:
		return unix.EINTR
	}
	return e
}
