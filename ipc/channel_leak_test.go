package ipc_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// The tests here feed a receiver messages it must refuse and check that
// every fd that came with them is closed again: none is left in the process
// (fd snapshots) and none anywhere else (the pipe behind them sees EOF).

// rawSend sends payload with fds attached, bypassing Send's checks.
func rawSend(t *testing.T, fd int, payload []byte, fds []int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(fd, payload, oob, nil, unix.MSG_DONTWAIT); err != nil {
		t.Fatalf("sendmsg: %v", err)
	}
}

// expectRefused receives on ch, wants err, and checks that no fd was
// returned or left open; then that the channel still delivers the next
// message, so a refused message does not leave it out of step.
func expectRefused(t *testing.T, from, ch *ipc.Channel, p *pipe, before fdSet, want error) {
	t.Helper()
	m, fds, err := ch.Recv(nil)
	if !errors.Is(err, want) || len(fds) != 0 || m != (ipc.Msg{}) {
		closeFds(fds)
		t.Fatalf("Recv = %+v, %d fds, %v; want zero Msg, no fds, %v", m, len(fds), err, want)
	}
	checkNoLeak(t, before)
	p.checkWriterGone(t)

	next := ipc.Msg{Cmd: ipc.CmdReady, Pid: 9}
	send(t, from, next, nil)
	if got, _ := recv(t, ch); got != next {
		t.Errorf("message after the refused one: %+v, want %+v", got, next)
	}
}

func TestRecvTruncatedControl(t *testing.T) {
	for _, room := range []int{0, 1, 4} {
		t.Run(fmt.Sprintf("5 fds into room for %d", room), func(t *testing.T) {
			a, b := pair(t)
			small := ipc.NewChannelRoom(b.Fd, room)
			p := newPipe(t)
			before := openFds(t)

			fds := dups(t, p.w, 5)
			send(t, a, ipc.Msg{Cmd: ipc.CmdFds}, fds)
			closeFds(fds)
			expectRefused(t, a, small, p, before, ipc.ErrTruncated)
		})
	}
}

func TestRecvTruncatedPayload(t *testing.T) {
	a, b := pair(t)
	p := newPipe(t)
	before := openFds(t)

	fds := dups(t, p.w, 2)
	long := append(raw(uint32(ipc.CmdConn), 1, 0, 2), make([]byte, ipc.MaxData+8)...)
	rawSend(t, a.Fd, long, fds)
	closeFds(fds)
	expectRefused(t, a, b, p, before, ipc.ErrTruncated)
}

func TestRecvMismatch(t *testing.T) {
	refuse := func(name string, payload []byte, nfds int) {
		t.Run(name, func(t *testing.T) {
			a, b := pair(t)
			p := newPipe(t)
			before := openFds(t)

			fds := dups(t, p.w, nfds)
			rawSend(t, a.Fd, payload, fds)
			closeFds(fds)
			expectRefused(t, a, b, p, before, ipc.ErrBadMsg)
		})
	}
	fdsMsg := func(count uint32) []byte { return raw(uint32(ipc.CmdFds), 1, 0, count) }
	refuse("count 3 carries 2", fdsMsg(3), 2)
	refuse("count 1 carries 2", fdsMsg(1), 2)
	refuse("count 2 carries none", fdsMsg(2), 0)
	refuse("count 0 carries 1", fdsMsg(0), 1)
	refuse("ready carries 1", raw(uint32(ipc.CmdReady), 1, 0, 0), 1)
	refuse("ready with count carries 1", raw(uint32(ipc.CmdReady), 1, 0, 1), 1)
	refuse("unknown cmd carries 1", raw(99, 1, 0, 1), 1)
	refuse("short message carries 1", fdsMsg(1)[:8], 1)
}
