package child

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's socket calls never block (every socket is O_NONBLOCK), so they
// go through RawSyscall: the runtime's entersyscall/exitsyscall bookkeeping
// costs more than such a call, and a P handed off during it must be won
// back with a futex wake-up. Only epoll_wait, which may sleep, goes through
// the scheduler (see epoll.Poller.Wait).

// sysRead reads from a non-blocking socket, retrying EINTR.
func sysRead(fd int, p []byte) (int, error) {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, unix.EAGAIN
		}
		return 0, e
	}
}

// sysWrite writes what the kernel takes now, with MSG_NOSIGNAL so that a peer
// that went away gives EPIPE rather than a signal. It returns the bytes
// written; EAGAIN comes back with 0.
func sysWrite(fd int, p []byte) (int, error) {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])),
			uintptr(len(p)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, unix.EAGAIN
		}
		return 0, e
	}
}

// sysClose closes fd. EINTR is not retried: on Linux the fd is gone anyway.
func sysClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}
