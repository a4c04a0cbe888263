// Package epoll is a thin, allocation-free wrapper over the Linux epoll API.
//
// A Poller knows nothing about connections: it registers file descriptors with
// an event mask and reports which of them are ready. The fd travels in the
// event's Fd field, so callers index their own tables with it.
package epoll

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Event masks, named after what a caller asks for.
const (
	In      = unix.EPOLLIN
	Out     = unix.EPOLLOUT
	RDHup   = unix.EPOLLRDHUP
	Err     = unix.EPOLLERR
	Hup     = unix.EPOLLHUP
	OneShot = unix.EPOLLONESHOT
)

// Event is one readiness report; Fd is the descriptor that was registered.
type Event = unix.EpollEvent

// Poller owns one epoll instance.
type Poller struct {
	fd int
}

// Open creates a poller whose descriptor is closed on exec.
func Open() (*Poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	return &Poller{fd: fd}, nil
}

// Fd returns the epoll descriptor itself.
func (p *Poller) Fd() int { return p.fd }

// Add registers fd for events.
func (p *Poller) Add(fd int, events uint32) error {
	return p.ctl(unix.EPOLL_CTL_ADD, fd, events)
}

// Rearm replaces the mask of a registered fd (EPOLL_CTL_MOD). With OneShot it
// is what hands the fd back to the kernel after its event was handled.
func (p *Poller) Rearm(fd int, events uint32) error {
	return p.ctl(unix.EPOLL_CTL_MOD, fd, events)
}

// Delete removes fd from the set. Closing an fd removes it as well, as long as
// no other descriptor refers to the same open file.
func (p *Poller) Delete(fd int) error {
	return p.ctl(unix.EPOLL_CTL_DEL, fd, 0)
}

// ctl never sleeps, so it skips the scheduler's syscall bookkeeping (see
// Wait for why that matters).
func (p *Poller) ctl(op, fd int, events uint32) error {
	ev := Event{Events: events, Fd: int32(fd)}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(p.fd), uintptr(op), uintptr(fd),
		uintptr(unsafe.Pointer(&ev)), 0, 0)
	if e != 0 {
		return os.NewSyscallError("epoll_ctl", e)
	}
	return nil
}

// Wait fills events with ready fds and returns how many. msec < 0 waits
// forever, 0 polls. An interrupted wait returns 0 and no error, so the caller's
// loop simply goes round again (and checks its flags).
//
// A busy loop finds events ready most of the time, so Wait first polls
// without sleeping, as a raw call that keeps the goroutine's P. Only when
// nothing is ready does it make the call that may sleep, through the
// scheduler, which then lets other goroutines have the P meanwhile. A
// syscall the scheduler knows about costs a lot more here than the poll:
// once the P has been handed off, getting it back takes a futex wake-up.
func (p *Poller) Wait(events []Event, msec int) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	ptr := uintptr(unsafe.Pointer(&events[0]))
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(p.fd), ptr, uintptr(len(events)), 0, 0, 0)
	if e == 0 && n == 0 && msec != 0 {
		n, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(p.fd), ptr, uintptr(len(events)), uintptr(msec), 0, 0)
	}
	switch e {
	case 0:
		return int(n), nil
	case unix.EINTR:
		return 0, nil
	}
	return 0, os.NewSyscallError("epoll_wait", e)
}

// Close releases the epoll instance. Registered fds stay open.
func (p *Poller) Close() error {
	return unix.Close(p.fd)
}
