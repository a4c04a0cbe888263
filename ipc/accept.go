package ipc

import (
	"log/slog"
	"time"

	"golang.org/x/sys/unix"
)

// Accept takes one connection off the listening socket lfd, non-blocking
// and close-on-exec, without asking for the peer's address, which would
// allocate. It is here because what it returns is what crosses to a child:
// the master accepts with it in fdpass mode, a child on its own listener in
// reuseport mode. Errors are the bare errno (unix.EAGAIN, unix.EMFILE ...),
// for the caller's switch.
func Accept(lfd int) (int, error) {
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0,
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// AcceptRest is what a loop does when Accept fails for want of fds (EMFILE,
// ENFILE): the connection stays queued and the listener readable, so the
// loop stops accepting until Until instead of spinning on it, and says so
// at most once a second. The zero value has never rested.
type AcceptRest struct {
	Until  time.Time // accepting may resume from here
	logged time.Time
}

// acceptRest is how long accepting rests.
const acceptRest = 100 * time.Millisecond

// Begin starts a rest at now after err, and logs it to log unless the last
// one logged was less than a second ago.
func (r *AcceptRest) Begin(now time.Time, log *slog.Logger, err error) {
	r.Until = now.Add(acceptRest)
	if now.Sub(r.logged) >= time.Second {
		r.logged = now
		log.Error("accept: out of file descriptors, pausing", "err", err)
	}
}
