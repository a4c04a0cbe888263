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

// sysRead reads what the socket holds; EAGAIN comes back with 0.
func sysRead(fd int, p []byte) (int, error) {
	return sockIO(unix.SYS_RECVFROM, fd, p, 0)
}

// sysWrite writes what the kernel takes now, with MSG_NOSIGNAL so that a peer
// that went away gives EPIPE rather than a signal. EAGAIN comes back with 0.
func sysWrite(fd int, p []byte) (int, error) {
	return sockIO(unix.SYS_SENDTO, fd, p, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
}

// sockIO makes a recvfrom or sendto without an address, retrying EINTR.
func sockIO(trap uintptr, fd int, p []byte, flags uintptr) (int, error) {
	for {
		r, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// sysClose closes fd. EINTR is not retried: on Linux the fd is gone anyway.
func sysClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}
