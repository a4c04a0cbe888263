package child

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysRead reads from a non-blocking socket, retrying EINTR.
func sysRead(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// sysWrite writes what the kernel takes now, with MSG_NOSIGNAL so that a peer
// that went away gives EPIPE rather than a signal. It returns the bytes
// written; EAGAIN comes back with 0.
func sysWrite(fd int, p []byte) (int, error) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])),
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
