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

// Poller owns one epoll instance. Add, Rearm and Delete may be called from
// any goroutine; Wait from one at a time.
type Poller struct {
	fd   int
	full bool // the last Wait filled its buffer: more events are likely ready
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
// A wait that may sleep goes through the scheduler, which lets other
// goroutines have the P meanwhile. When the last Wait filled the whole
// buffer, more events are surely ready, so Wait first polls without
// sleeping, as a raw call that keeps the goroutine's P and skips the
// scheduler's bookkeeping. Otherwise it does not: a loop that has just
// served what one wake-up brought finds nothing new nine times in ten (wrk
// -c64, keep-alive or one request per connection), and the empty poll was
// then a second epoll_pwait for every sleep.
func (p *Poller) Wait(events []Event, msec int) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	ptr := uintptr(unsafe.Pointer(&events[0]))
	var n uintptr
	var e unix.Errno
	if msec == 0 || p.full {
		n, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(p.fd), ptr, uintptr(len(events)), 0, 0, 0)
	}
	if msec != 0 && e == 0 && n == 0 {
		n, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(p.fd), ptr, uintptr(len(events)), uintptr(msec), 0, 0)
	}
	p.full = e == 0 && int(n) == len(events)
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
