package ipc_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/procpool/procpool/ipc"
)

// allCmds are the commands a peer may send.
var allCmds = []ipc.Cmd{ipc.CmdFds, ipc.CmdReady, ipc.CmdDrain, ipc.CmdStop, ipc.CmdReopen, ipc.CmdPing, ipc.CmdDraining, ipc.CmdRetire, ipc.CmdConn, ipc.CmdGoAway}

func marshal(m ipc.Msg) []byte {
	b := make([]byte, ipc.MsgSize)
	m.Marshal(b)
	return b
}

// raw builds a message's bytes field by field, as the wire format describes
// them, without going through Marshal.
func raw(cmd, pid, slot, arg uint32) []byte {
	b := make([]byte, ipc.MsgSize)
	binary.NativeEndian.PutUint32(b[0:], cmd)
	binary.NativeEndian.PutUint32(b[4:], pid)
	binary.NativeEndian.PutUint32(b[8:], slot)
	binary.NativeEndian.PutUint32(b[12:], arg)
	return b
}

func TestMsgRoundTrip(t *testing.T) {
	for _, cmd := range allCmds {
		m := ipc.Msg{Cmd: cmd, Pid: 4242, Slot: -7}
		if cmd == ipc.CmdFds {
			m.Arg = ipc.MaxFds
		}
		got, err := ipc.Unmarshal(marshal(m))
		if err != nil || got != m {
			t.Errorf("%v: Unmarshal(Marshal(%+v)) = %+v, %v", cmd, m, got, err)
		}
	}
}

func TestMsgLayout(t *testing.T) {
	m := ipc.Msg{Cmd: ipc.CmdFds, Pid: -2, Slot: 3, Arg: 9}
	want := raw(uint32(ipc.CmdFds), 0xfffffffe, 3, 9)
	if got := marshal(m); string(got) != string(want) {
		t.Errorf("Marshal(%+v) = %x, want %x", m, got, want)
	}
}

func TestUnmarshalRejects(t *testing.T) {
	good := marshal(ipc.Msg{Cmd: ipc.CmdReady, Pid: 1})
	reject := func(name string, b []byte) {
		t.Helper()
		m, err := ipc.Unmarshal(b)
		if !errors.Is(err, ipc.ErrBadMsg) || m != (ipc.Msg{}) {
			t.Errorf("%s: Unmarshal(%x) = %+v, %v; want zero Msg, ErrBadMsg", name, b, m, err)
		}
	}
	reject("empty", nil)
	reject("short", good[:ipc.MsgSize-1])
	reject("long", append(good, 0))
	reject("double", append(good, good...))
	reject("cmd 0", raw(0, 1, 0, 0))
	reject("unknown cmd", raw(uint32(ipc.CmdGoAway)+1, 1, 0, 0))
	reject("huge cmd", raw(^uint32(0), 1, 0, 0))
	reject("fds without count", raw(uint32(ipc.CmdFds), 1, 0, 0))
	reject("fds over MaxFds", raw(uint32(ipc.CmdFds), 1, 0, ipc.MaxFds+1))
	reject("fds count negative", raw(uint32(ipc.CmdFds), 1, 0, ^uint32(0)))
}

func TestUnmarshalAcceptsFdCounts(t *testing.T) {
	for _, n := range []uint32{1, 2, ipc.MaxFds} {
		m, err := ipc.Unmarshal(raw(uint32(ipc.CmdFds), 1, 0, n))
		if err != nil || m.Arg != n {
			t.Errorf("CmdFds with %d fds: got %+v, %v", n, m, err)
		}
	}
}

func TestCmdString(t *testing.T) {
	want := map[ipc.Cmd]string{
		ipc.CmdFds: "fds", ipc.CmdReady: "ready", ipc.CmdDrain: "drain",
		ipc.CmdStop: "stop", ipc.CmdReopen: "reopen", ipc.CmdPing: "ping", ipc.CmdDraining: "draining", ipc.CmdRetire: "retire", ipc.CmdConn: "conn", ipc.CmdGoAway: "goaway", 0: "cmd(0)", 99: "cmd(99)",
	}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("Cmd(%d).String() = %q, want %q", uint32(c), c.String(), s)
		}
	}
}
