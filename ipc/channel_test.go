package ipc_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

func send(t *testing.T, ch *ipc.Channel, m ipc.Msg, fds []int) {
	t.Helper()
	if err := ch.Send(m, fds); err != nil {
		t.Fatalf("Send(%+v, %d fds): %v", m, len(fds), err)
	}
}

// recv receives a message that must already be queued: a channel is a
// SOCK_SEQPACKET socketpair, so a message is in the peer's queue when Send
// returns.
func recv(t *testing.T, ch *ipc.Channel) (ipc.Msg, []int) {
	t.Helper()
	m, fds, err := ch.Recv(nil)
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return m, fds
}

func expectEmpty(t *testing.T, ch *ipc.Channel) {
	t.Helper()
	m, fds, err := ch.Recv(nil)
	if !errors.Is(err, ipc.ErrAgain) || len(fds) != 0 {
		closeFds(fds)
		t.Fatalf("Recv on an empty channel = %+v, %d fds, %v; want ErrAgain", m, len(fds), err)
	}
}

// loopbackConns opens n client connections to a loopback listener and
// returns them with the listener's accepted ends as raw descriptors, in the
// same order. The accepted net.Conns are closed; only the raw copies stay.
func loopbackConns(t *testing.T, n int) (clients []net.Conn, served []int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if s.RemoteAddr().String() != c.LocalAddr().String() {
			t.Fatalf("accepted %v, want the connection from %v", s.RemoteAddr(), c.LocalAddr())
		}
		fd := dupConn(t, s)
		s.Close()
		clients = append(clients, c)
		served = append(served, fd)
	}
	return clients, served
}

func dupConn(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd, dupErr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		t.Fatal(err)
	}
	if dupErr != nil {
		t.Fatal(dupErr)
	}
	return fd
}

// expectReply reads c to the end and compares what came.
func expectReply(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != want {
		t.Errorf("client %v read %q, %v; want %q then EOF", c.LocalAddr(), got, err, want)
	}
}

func TestSendRecvPlain(t *testing.T) {
	a, b := pair(t)
	for i, cmd := range allCmds[1:] {
		if cmd == ipc.CmdConn {
			continue // always carries a connection: TestSendConn
		}
		// Arg travels as given (CmdRetire's is the grace period), but for a
		// command that may carry fds, where it counts them.
		m := ipc.Msg{Cmd: cmd, Pid: int32(1000 + i), Slot: int32(i), Arg: uint32(100 * i)}
		if cmd == ipc.CmdReopen {
			m.Arg = 0
		}
		send(t, a, m, nil)
		got, fds := recv(t, b)
		if got != m || len(fds) != 0 {
			t.Errorf("sent %+v, received %+v with %d fds", m, got, len(fds))
		}
	}
	// And the other way.
	m := ipc.Msg{Cmd: ipc.CmdReady, Pid: 7, Slot: 3}
	send(t, b, m, nil)
	if got, _ := recv(t, a); got != m {
		t.Errorf("sent %+v, received %+v", m, got)
	}
	expectEmpty(t, a)
	expectEmpty(t, b)
}

// A connection travels with the bytes already read from it; they arrive
// whole, beside exactly that connection, and a message that says otherwise
// is refused with its fds closed.
func TestSendConn(t *testing.T) {
	a, b := pair(t)
	clients, served := loopbackConns(t, 1)
	data := []byte("GET /half HTTP/1.1\r\nHo")
	if err := a.SendConn(ipc.Msg{Pid: 1, Slot: 2}, served[0], data); err != nil {
		t.Fatal(err)
	}
	m, fds := recv(t, b)
	if m.Cmd != ipc.CmdConn || int(m.Arg) != len(data) || len(fds) != 1 || string(b.Data()) != string(data) {
		t.Fatalf("received %+v with %d fds and %q; want conn with %q", m, len(fds), b.Data(), data)
	}
	unix.Write(fds[0], []byte("over the handed connection"))
	unix.Close(fds[0])
	unix.Close(served[0])
	expectReply(t, clients[0], "over the handed connection")

	if err := a.SendConn(ipc.Msg{}, 0, make([]byte, ipc.MaxData+1)); err != ipc.ErrBadMsg {
		t.Errorf("SendConn of %d bytes: %v, want ErrBadMsg", ipc.MaxData+1, err)
	}
	if err := a.Send(ipc.Msg{Cmd: ipc.CmdConn}, nil); err != ipc.ErrBadMsg {
		t.Errorf("Send of a conn without its connection: %v, want ErrBadMsg", err)
	}
	expectEmpty(t, b)
}

// CmdReopen may bring the master's log along: one fd, no more.
func TestSendReopenWithLog(t *testing.T) {
	a, b := pair(t)
	p := newPipe(t)
	send(t, a, ipc.Msg{Cmd: ipc.CmdReopen}, []int{p.w})
	m, fds := recv(t, b)
	if m.Cmd != ipc.CmdReopen || m.Arg != 1 || len(fds) != 1 {
		t.Fatalf("received %+v with %d fds, want reopen with 1", m, len(fds))
	}
	unix.Close(fds[0])
	if err := a.Send(ipc.Msg{Cmd: ipc.CmdReopen}, []int{p.w, p.w}); err != ipc.ErrBadMsg {
		t.Errorf("reopen with two fds: %v, want ErrBadMsg", err)
	}
	if err := a.Send(ipc.Msg{Cmd: ipc.CmdDrain}, []int{p.w}); err != ipc.ErrBadMsg {
		t.Errorf("drain with an fd: %v, want ErrBadMsg", err)
	}
}

func TestRecvEmpty(t *testing.T) {
	_, b := pair(t)
	expectEmpty(t, b)
}

func TestSendRecvSockets(t *testing.T) {
	a, b := pair(t)
	before := openFds(t)
	clients, served := loopbackConns(t, 5)

	send(t, a, ipc.Msg{Cmd: ipc.CmdFds, Pid: 1, Slot: 2}, served)
	closeFds(served)

	m, fds := recv(t, b)
	if m.Cmd != ipc.CmdFds || m.Pid != 1 || m.Slot != 2 || int(m.Arg) != len(served) || len(fds) != len(served) {
		closeFds(fds)
		t.Fatalf("received %+v with %d fds, want CmdFds with %d", m, len(fds), len(served))
	}
	for i, fd := range fds {
		if !isCloseOnExec(t, fd) {
			t.Errorf("received fd %d lacks FD_CLOEXEC", fd)
		}
		peer, err := unix.Getpeername(fd)
		if err != nil {
			t.Errorf("getpeername(%d): %v", fd, err)
		} else if addr := peer.(*unix.SockaddrInet4); addr.Port != clients[i].LocalAddr().(*net.TCPAddr).Port {
			t.Errorf("received fd %d is connected to port %d, want client %d at %v (order kept)",
				fd, addr.Port, i, clients[i].LocalAddr())
		}
		if _, err := unix.Write(fd, fmt.Appendf(nil, "reply %d", i)); err != nil {
			t.Errorf("write on received fd %d: %v", fd, err)
		}
		unix.Close(fd)
	}
	// EOF comes only if no copy of the accepted socket is open anywhere.
	for i, c := range clients {
		expectReply(t, c, fmt.Sprintf("reply %d", i))
		c.Close()
	}
	checkNoLeak(t, before)
}

func TestSendRecvMaxFds(t *testing.T) {
	a, b := pair(t)
	p := newPipe(t)
	before := openFds(t)

	sent := dups(t, p.w, ipc.MaxFds)
	// Arg is the sender's to state wrongly: Send sets it from the fds.
	send(t, a, ipc.Msg{Cmd: ipc.CmdFds, Arg: 1}, sent)
	closeFds(sent)

	m, fds := recv(t, b)
	defer func() { closeFds(fds) }()
	if m.Cmd != ipc.CmdFds || m.Arg != ipc.MaxFds || len(fds) != ipc.MaxFds {
		t.Fatalf("received %+v with %d fds, want CmdFds with %d", m, len(fds), ipc.MaxFds)
	}
	for _, fd := range fds {
		if !isCloseOnExec(t, fd) {
			t.Fatalf("received fd %d lacks FD_CLOEXEC", fd)
		}
		if _, err := unix.Write(fd, []byte{'x'}); err != nil {
			t.Fatalf("write through received fd %d: %v", fd, err)
		}
	}
	buf := make([]byte, 2*ipc.MaxFds)
	if n, err := unix.Read(p.r, buf); n != ipc.MaxFds || err != nil {
		t.Fatalf("read %d bytes, %v from the pipe; want one byte per received fd, %d", n, err, ipc.MaxFds)
	}
	closeFds(fds)
	fds = nil
	checkNoLeak(t, before)
	p.checkWriterGone(t)
}

func TestSendRejects(t *testing.T) {
	a, b := pair(t)
	p := newPipe(t)
	reject := func(name string, m ipc.Msg, fds []int) {
		t.Helper()
		if err := a.Send(m, fds); !errors.Is(err, ipc.ErrBadMsg) {
			t.Errorf("%s: Send = %v, want ErrBadMsg", name, err)
		}
		expectEmpty(t, b)
	}
	tooMany := make([]int, ipc.MaxFds+1)
	for i := range tooMany {
		tooMany[i] = p.w
	}
	reject("more than MaxFds", ipc.Msg{Cmd: ipc.CmdFds}, tooMany)
	reject("fds on CmdReady", ipc.Msg{Cmd: ipc.CmdReady}, []int{p.w})
	reject("fds on CmdStop", ipc.Msg{Cmd: ipc.CmdStop}, []int{p.w})
	reject("CmdFds without fds", ipc.Msg{Cmd: ipc.CmdFds, Arg: 1}, nil)
}

func TestSendFullQueue(t *testing.T) {
	a, b := pair(t)
	const limit = 1 << 20 // far beyond any socket buffer
	sent := 0
	var err error
	for sent < limit {
		if err = a.Send(ipc.Msg{Cmd: ipc.CmdReady, Slot: int32(sent)}, nil); err != nil {
			break
		}
		sent++
	}
	if !errors.Is(err, ipc.ErrAgain) || sent == 0 {
		t.Fatalf("after %d sends: %v, want ErrAgain", sent, err)
	}

	// A full channel takes no fds either, and leaves them with the caller.
	p := newPipe(t)
	fd := dups(t, p.w, 1)
	if err := a.Send(ipc.Msg{Cmd: ipc.CmdFds}, fd); !errors.Is(err, ipc.ErrAgain) {
		t.Errorf("Send with fds on a full channel = %v, want ErrAgain", err)
	}
	closeFds(fd)
	p.checkWriterGone(t) // the failed send kept no reference

	// Taking one message out makes room for one more.
	if m, _ := recv(t, b); m.Slot != 0 {
		t.Fatalf("first message has slot %d, want 0", m.Slot)
	}
	send(t, a, ipc.Msg{Cmd: ipc.CmdReady, Slot: int32(sent)}, nil)
	for want := 1; want <= sent; want++ {
		if m, _ := recv(t, b); m.Slot != int32(want) {
			t.Fatalf("message has slot %d, want %d (none lost, none reordered)", m.Slot, want)
		}
	}
	expectEmpty(t, b)
}

func TestRecvEOF(t *testing.T) {
	x, y, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	a, b := ipc.NewChannel(x), ipc.NewChannel(y)
	defer b.Close()

	m := ipc.Msg{Cmd: ipc.CmdDrain, Pid: 5}
	send(t, a, m, nil)
	a.Close()
	// What was queued before the close still arrives, then EOF, every time.
	if got, _ := recv(t, b); got != m {
		t.Errorf("received %+v, want %+v", got, m)
	}
	for range 2 {
		if _, fds, err := b.Recv(nil); err != io.EOF || len(fds) != 0 {
			t.Errorf("Recv after peer close = %d fds, %v; want io.EOF", len(fds), err)
		}
	}
	if err := b.Send(ipc.Msg{Cmd: ipc.CmdReady}, nil); !errors.Is(err, unix.EPIPE) {
		t.Errorf("Send to a closed peer = %v, want EPIPE", err)
	}
}

// Send and Recv are on the hot path of every connection: neither may
// allocate, with fds or without (the msghdr and its iovec stay on the stack).
func TestSendRecvDoNotAllocate(t *testing.T) {
	a, b := pair(t)
	p := newPipe(t)
	one := dups(t, p.r, 1)
	defer closeFds(one)
	fds := make([]int, 0, ipc.MaxFds)
	allocs := testing.AllocsPerRun(100, func() {
		if err := a.Send(ipc.Msg{Cmd: ipc.CmdFds}, one); err != nil {
			t.Fatal(err)
		}
		_, got, err := b.Recv(fds)
		if err != nil || len(got) != 1 {
			t.Fatalf("Recv: %d fds, %v", len(got), err)
		}
		unix.Close(got[0])
		if err := b.Send(ipc.Msg{Cmd: ipc.CmdPing}, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.Recv(fds); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Send and Recv, with an fd and without: %v allocations per run, want 0", allocs)
	}
}
