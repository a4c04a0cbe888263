package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// msgSize is the size in bytes of every message on a channel.
const msgSize = 16

// MaxFds is the most descriptors one message carries (SCM_MAX_FD in the kernel).
const MaxFds = 253

// MaxData is the most bytes a CmdConn message carries after its header. A
// connection with more already read than this cannot be handed on.
const MaxData = 16 << 10

// Cmd names what a message asks for or announces.
type Cmd uint32

// Commands. The zero value is never sent, so a zeroed buffer is not a message.
const (
	CmdFds    Cmd = iota + 1 // master → child: accepted connections attached
	CmdReady                 // child → master: initialised, send me work
	CmdDrain                 // master → child: stop taking work, finish, exit 0
	CmdStop                  // master → child: exit now
	CmdReopen                // master → child: reopen log files; the master's log may come along as an fd
	// CmdPing wakes a child the master has found stalled, so that the child
	// turns its loop as soon as it runs again; the child answers with a
	// CmdPing of its own, which wakes the master to see that progress.
	CmdPing // master → child: are you there? child → master: yes
	// CmdDraining tells the master that a child began to drain on its own
	// (a SIGTERM sent to it directly), so it gets no new connections.
	CmdDraining // child → master: draining; send me nothing more
	// CmdRetire asks a child to finish what it is doing and hand every
	// connection back as soon as it is idle between requests; Arg is the
	// deadline in milliseconds after which it closes what it still holds.
	CmdRetire // master → child: hand your connections back, then exit
	// CmdConn carries one connection and the bytes of its next request that
	// were already read (Arg of them, after the header): a retired child
	// hands it back, and the master deals it on.
	CmdConn // either way: a connection with bytes already read from it
	// CmdGoAway announces a stop to come (the master's -shutdown-delay):
	// the child serves on, but every response says Connection: close, so
	// that clients and balancers move to other servers by themselves.
	CmdGoAway // master → child: answer with Connection: close from now on
	cmdLimit
)

var cmdNames = [...]string{
	CmdFds:      "fds",
	CmdReady:    "ready",
	CmdDrain:    "drain",
	CmdStop:     "stop",
	CmdReopen:   "reopen",
	CmdPing:     "ping",
	CmdDraining: "draining",
	CmdRetire:   "retire",
	CmdConn:     "conn",
	CmdGoAway:   "goaway",
}

func (c Cmd) String() string {
	if c > 0 && c < cmdLimit {
		return cmdNames[c]
	}
	return fmt.Sprintf("cmd(%d)", uint32(c))
}

// Msg is one channel message.
type Msg struct {
	Cmd  Cmd
	Pid  int32
	Slot int32
	Arg  uint32
}

// ErrBadMsg reports a message of the wrong size, one that names an unknown
// command, or whose fd count does not match what it carries.
var ErrBadMsg = errors.New("ipc: malformed channel message")

// marshal writes m into b, which must hold msgSize bytes.
func (m Msg) marshal(b []byte) {
	_ = b[msgSize-1]
	binary.NativeEndian.PutUint32(b[0:], uint32(m.Cmd))
	binary.NativeEndian.PutUint32(b[4:], uint32(m.Pid))
	binary.NativeEndian.PutUint32(b[8:], uint32(m.Slot))
	binary.NativeEndian.PutUint32(b[12:], m.Arg)
}

// unmarshal parses b and checks that it is a well-formed message.
func unmarshal(b []byte) (Msg, error) {
	if len(b) != msgSize {
		return Msg{}, ErrBadMsg
	}
	m := Msg{
		Cmd:  Cmd(binary.NativeEndian.Uint32(b[0:])),
		Pid:  int32(binary.NativeEndian.Uint32(b[4:])),
		Slot: int32(binary.NativeEndian.Uint32(b[8:])),
		Arg:  binary.NativeEndian.Uint32(b[12:]),
	}
	if m.Cmd == 0 || m.Cmd >= cmdLimit {
		return Msg{}, ErrBadMsg
	}
	if m.Cmd == CmdFds && (m.Arg == 0 || m.Arg > MaxFds) {
		return Msg{}, ErrBadMsg
	}
	if m.Cmd == CmdConn && m.Arg > MaxData {
		return Msg{}, ErrBadMsg
	}
	return m, nil
}
