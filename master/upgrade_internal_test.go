package master

// Unit tests of what a new master takes over at an upgrade: the listening
// socket (adopt) and the admin listener. The old master starts the new one
// through fakeSys, which keeps the fds it was given; the test then plays the
// new master in this process.

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// tcpSocket is a TCP socket bound to a free loopback port, listening or not.
func tcpSocket(t *testing.T, listening bool) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeLater(t, fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if listening {
		if err := unix.Listen(fd, 8); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

// An inherited socket suits the mode: fdpass listens on it (a reuseport
// master's port reservation is made to listen), reuseport refuses a
// listening one, whose queue no one would accept from. Either way the
// socket becomes non-blocking and close-on-exec.
func TestAdopt(t *testing.T) {
	cases := []struct {
		name      string
		listening bool
		mode      string
		err       error
	}{
		{"fdpass takes a listening socket", true, ModeFdpass, nil},
		{"fdpass listens on a reservation", false, ModeFdpass, nil},
		{"reuseport takes a reservation", false, ModeReuseport, nil},
		{"reuseport refuses a listening socket", true, ModeReuseport, errModeSwitch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fd := tcpSocket(t, c.listening)
			// As inherited across exec: without close-on-exec, which
			// adopt must set again.
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
				t.Fatal(err)
			}
			got, err := adopt(fd, c.mode, 0)
			if !errors.Is(err, c.err) {
				t.Fatalf("adopt: %v, want %v", err, c.err)
			}
			if err != nil {
				return
			}
			flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			fdflags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			listening, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
			if got != fd || flags&unix.O_NONBLOCK == 0 || fdflags&unix.FD_CLOEXEC == 0 ||
				(listening != 0) != (c.mode == ModeFdpass) {
				t.Fatalf("fd %d (of %d), flags %#x, fd flags %#x, listening %d", got, fd, flags, fdflags, listening)
			}
		})
	}
	if _, err := adopt(-1, ModeFdpass, 0); err == nil {
		t.Error("adopted no socket at all")
	}
}

// adminUpgrade has a master with -admin addr upgrade, and returns what the
// new master is started with: its copy of the admin listener, named as the
// environment names it.
func adminUpgrade(t *testing.T, addr string) (old *Master, inherited int) {
	t.Helper()
	m, f, _ := upgradeMaster(t)
	if err := m.startAdmin(addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.admin != nil {
			m.admin.stop()
		}
	})
	m.upgrade()
	p := f.procs[m.upgradePid]
	if p.getenv(EnvAdminFd) != strconv.Itoa(upgradeAdminFd) {
		t.Fatalf("new master started with %s=%q", EnvAdminFd, p.getenv(EnvAdminFd))
	}
	return m, p.fd(t, upgradeAdminFd)
}

// newAdmin is the new master's admin listener for -admin addr, with fd
// inherited as the environment says; the variable is gone after.
func newAdmin(t *testing.T, fd int, addr string) *Master {
	t.Helper()
	t.Setenv(EnvAdminFd, strconv.Itoa(fd))
	n, _, _ := newFakeMaster(t, 1, Config{})
	if err := n.startAdmin(addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.admin.stop)
	if v, ok := os.LookupEnv(EnvAdminFd); ok {
		t.Fatalf("%s=%q left for the processes the new master starts", EnvAdminFd, v)
	}
	return n
}

// The new master serves /status on the admin listener the old one passed,
// when it asks for the same address: the port never closes. Asked for
// another address, it lets the inherited one go and listens anew. (The old
// master lets go of its listener first here: both in one process, the new
// one's take-over would briefly make the shared socket blocking under the
// old one's accept.)
func TestUpgradeAdminListener(t *testing.T) {
	t.Run("same address", func(t *testing.T) {
		old, fd := adminUpgrade(t, "127.0.0.1:0")
		addr := old.admin.ln.Addr().String()
		want := inodes(t, []int{fd})
		old.admin.stop() // the old master exits first; its passed copy keeps the port
		old.admin = nil
		n := newAdmin(t, fd, addr)
		if got := n.admin.ln.Addr().String(); got != addr || !slices.Equal(listenerInode(t, n.admin.ln), want) {
			t.Fatalf("new master's admin on %s, want %s, on the listener passed", got, addr)
		}
	})
	t.Run("another address", func(t *testing.T) {
		old, fd := adminUpgrade(t, "127.0.0.1:0")
		addr := old.admin.ln.Addr().String()
		old.admin.stop() // the old master exits first
		old.admin = nil
		// Another loopback address, any port: no port to find free first.
		n := newAdmin(t, fd, "127.0.0.2:0")
		if got := n.admin.ln.Addr().(*net.TCPAddr); !got.IP.Equal(net.IPv4(127, 0, 0, 2)) {
			t.Fatalf("new master's admin on %s, want 127.0.0.2", got)
		}
		if c, err := net.Dial("tcp", addr); err == nil { // nobody holds the old listener now
			c.Close()
			t.Fatalf("%s still listens after the old master let it go", addr)
		}
	})
	t.Run("unix socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "admin.sock")
		old, fd := adminUpgrade(t, "unix:"+path)
		old.admin.stop() // the old master exits first: the path must stay
		old.admin = nil
		n := newAdmin(t, fd, "unix:"+path)
		if got := n.admin.ln.Addr().String(); got != path {
			t.Fatalf("new master's admin on %s, want %s", got, path)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("the inherited admin socket does not answer: %v", err)
		}
		c.Close()
	})
}

// listenerInode names the socket ln listens on.
func listenerInode(t *testing.T, ln net.Listener) []uint64 {
	t.Helper()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	return []uint64{st.Ino}
}

// A Unix admin socket that a master left behind when it died is replaced;
// one that a master still listens on, or any other file, is not touched.
func TestAdminStaleSocket(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // as a master killed with SIGKILL leaves it
	m, _, _ := newFakeMaster(t, 1, Config{})
	if err := m.startAdmin("unix:" + stale); err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	t.Cleanup(m.admin.stop)

	other, _, _ := newFakeMaster(t, 1, Config{})
	if err := other.startAdmin("unix:" + stale); err == nil {
		other.admin.stop()
		t.Fatal("took the socket of a master that listens on it")
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := other.startAdmin("unix:" + file); err == nil {
		other.admin.stop()
		t.Fatal("replaced a file that is no socket")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("the file was touched: %q, %v", b, err)
	}
	if err := clearStaleSocket(filepath.Join(dir, "none")); err != nil {
		t.Fatalf("nothing to clear: %v", err)
	}
}

// Passing the admin listener to a new master leaves it non-blocking: its
// file description is shared, and in blocking mode the old master's accept
// would wait in the kernel, where closing the listener cannot wake it, so
// the old master would hang in its exit until some client connected (after
// a failed upgrade too).
func TestUpgradeAdminStaysNonblocking(t *testing.T) {
	old, fd := adminUpgrade(t, "127.0.0.1:0")
	closeLater(t, fd)
	rc, err := old.admin.ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	rc.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Fatalf("the admin listener's flags %#x (%v): blocking after the upgrade", flags, err)
	}
}
