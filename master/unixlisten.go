package master

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// UnixPrefix marks a Unix-socket address: -listen unix:/run/procpool.sock.
const UnixPrefix = "unix:"

// ErrUnixReuseport: in reuseport mode every child binds its own
// SO_REUSEPORT TCP socket, and a Unix socket has no such group.
var ErrUnixReuseport = errors.New("a Unix-socket listener works in fdpass mode only: in reuseport mode each child " +
	"binds its own SO_REUSEPORT TCP socket, which a Unix socket cannot share")

// DefaultListenMode is the file mode of a Unix-socket listener when none is
// given: anyone on the machine may connect, as to a TCP port.
const DefaultListenMode os.FileMode = 0o666

// UnixPath is the path of a Unix-socket address, "" for any other.
func UnixPath(addr string) string {
	path, _ := strings.CutPrefix(addr, UnixPrefix)
	if len(path) == len(addr) {
		return ""
	}
	return path
}

// ListenUnix opens a non-blocking, close-on-exec Unix stream socket
// listening at path, whose file gets mode (0: DefaultListenMode). A socket
// file left at path by a server that is gone is replaced; a file that is not
// a socket, or a socket somebody listens on, is not. The socket file is
// left in place at exit (an upgraded master goes on serving it); the next
// start replaces it.
//
// The permissions hold from the first moment: the socket is given mode
// before it is bound, so the file is created with mode (less the umask, the
// only window, and a stricter one) and then set to mode exactly.
func ListenUnix(path string, mode os.FileMode, backlog int) (int, error) {
	fail := func(err error) (int, error) { return -1, fmt.Errorf("listen unix:%s: %w", path, err) }
	if path == "" {
		return fail(errors.New("no path"))
	}
	if mode == 0 {
		mode = DefaultListenMode
	}
	if err := clearStaleSocket(path); err != nil {
		return fail(err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(os.NewSyscallError("socket", err))
	}
	if err := unix.Fchmod(fd, uint32(mode.Perm())); err != nil {
		unix.Close(fd)
		return fail(os.NewSyscallError("fchmod", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return fail(err)
		}
		return fail(os.NewSyscallError("bind", err))
	}
	if err := unix.Chmod(path, uint32(mode.Perm())); err != nil {
		unix.Close(fd)
		unix.Unlink(path)
		return fail(os.NewSyscallError("chmod", err))
	}
	if backlog <= 0 {
		backlog = somaxconn()
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		unix.Unlink(path)
		return fail(os.NewSyscallError("listen", err))
	}
	return fd, nil
}
