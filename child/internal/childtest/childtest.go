// Package childtest plays the master's part in tests that run a child on a
// goroutine: it listens on loopback, and each connection a test dials is
// accepted and passed over the channel as the master passes it.
package childtest

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Listener is a blocking loopback listener.
type Listener struct {
	Fd   int
	Addr string // host:port to dial
}

// Listen opens a Listener on a free port of 127.0.0.1.
func Listen(t testing.TB) *Listener {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	l := &Listener{Fd: fd}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		l.Close()
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		l.Close()
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	l.Addr = "127.0.0.1:" + strconv.Itoa(sa.(*unix.SockaddrInet4).Port)
	return l
}

func (l *Listener) Close() { unix.Close(l.Fd) }

// Dial connects through d and accepts the server side, non-blocking and
// close-on-exec as the master accepts it. The client side is closed when
// the test ends and has a deadline, so that a stuck child fails the test
// rather than hanging it.
func (l *Listener) Dial(t testing.TB, d *net.Dialer) (client net.Conn, server int) {
	t.Helper()
	nc, err := d.Dial("tcp", l.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	fd, _, err := unix.Accept4(l.Fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return nc, fd
}

// Pass hands fd to the child over ch and closes the test's copy.
func Pass(t testing.TB, ch *ipc.Channel, fd int) {
	t.Helper()
	err := ch.Send(ipc.Msg{Cmd: ipc.CmdFds}, []int{fd})
	unix.Close(fd)
	if err != nil {
		t.Fatalf("pass fd: %v", err)
	}
}
