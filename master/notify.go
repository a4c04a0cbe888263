package master

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// notify sends a state line to systemd when it supervises us
// (NOTIFY_SOCKET is set, Type=notify); otherwise it does nothing.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	// x/sys maps a leading '@' to the abstract namespace, as systemd means it.
	unix.Sendto(fd, []byte(state), unix.MSG_NOSIGNAL, &unix.SockaddrUnix{Name: path})
}

// ActivatedListener returns the listening socket systemd passed by socket
// activation (LISTEN_PID is us, LISTEN_FDS >= 1: the socket is fd 3), or -1.
// It clears the variables so that children do not believe them too.
func ActivatedListener() int {
	pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID"))
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if pid != os.Getpid() || n < 1 {
		return -1
	}
	const first = 3 // SD_LISTEN_FDS_START
	unix.CloseOnExec(first)
	if err := unix.SetNonblock(first, true); err != nil {
		return -1
	}
	return first
}
