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

// notifyReady tells systemd that the service is ready, and that this
// process is its main one: after an upgrade that is the new master.
func notifyReady() { notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())) }

// notifyHandOver makes pid, the new master of an upgrade, systemd's main
// process. That one says READY and STOPPING for the service from now on.
// This one's stop is not the service's: with NotifyAccess=all a STOPPING=1
// from here would start a stop of the unit. Like sd_notify's
// unset_environment, say nothing more.
func notifyHandOver(pid int) {
	notify("MAINPID=" + strconv.Itoa(pid))
	os.Unsetenv("NOTIFY_SOCKET")
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
