package ipc

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// NewChannelRoom is NewChannel with control space for only n fds, so that a
// test can make the kernel truncate what arrives (MSG_CTRUNC). Use it only to
// receive: Send builds its control block in the same buffer.
func NewChannelRoom(fd, n int) *Channel {
	return &Channel{Fd: fd, oob: make([]byte, unix.CmsgSpace(n*4))}
}

// The message format, for the tests of its encoding.
const MsgSize = msgSize

var Unmarshal = unmarshal

func (m Msg) Marshal(b []byte) { m.marshal(b) }

func (p *SelfPipe) Raise(sig syscall.Signal) { p.raise(sig) }
