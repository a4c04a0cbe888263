package ipc_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/procpool/procpool/ipc"
)

// FuzzUnmarshal checks that no input makes Unmarshal panic, that it only
// ever fails with ErrBadMsg, and that what it accepts is a valid message
// that marshals back to exactly the input.
func FuzzUnmarshal(f *testing.F) {
	for _, cmd := range allCmds {
		f.Add(marshal(ipc.Msg{Cmd: cmd, Pid: 100, Slot: 2, Arg: 1}))
	}
	f.Add(marshal(ipc.Msg{Cmd: ipc.CmdFds, Pid: 1, Arg: ipc.MaxFds}))
	f.Add(raw(uint32(ipc.CmdFds), 1, 0, 0))
	f.Add(raw(uint32(ipc.CmdFds), 1, 0, ipc.MaxFds+1))
	f.Add(raw(0, 1, 0, 0))
	f.Add(raw(uint32(ipc.CmdGoAway)+1, 1, 0, 0))
	f.Add(raw(^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0)))
	f.Add([]byte{})
	f.Add(make([]byte, ipc.MsgSize-1))
	f.Add(make([]byte, ipc.MsgSize+1))

	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ipc.Unmarshal(b)
		if err != nil {
			if !errors.Is(err, ipc.ErrBadMsg) || m != (ipc.Msg{}) {
				t.Fatalf("Unmarshal(%x) = %+v, %v; a failure must be a zero Msg and ErrBadMsg", b, m, err)
			}
			return
		}
		if len(b) != ipc.MsgSize {
			t.Fatalf("Unmarshal accepted %d bytes", len(b))
		}
		if m.Cmd.String() == "" || m.Cmd == 0 || m.Cmd > ipc.CmdGoAway {
			t.Fatalf("Unmarshal accepted command %v", m.Cmd)
		}
		if m.Cmd == ipc.CmdFds && (m.Arg < 1 || m.Arg > ipc.MaxFds) {
			t.Fatalf("Unmarshal accepted CmdFds with %d fds", m.Arg)
		}
		if again := marshal(m); !bytes.Equal(again, b) {
			t.Fatalf("Unmarshal(%x) = %+v, which marshals to %x", b, m, again)
		}
	})
}
