package ipc

import (
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// SelfPipe turns signals into readiness on a pipe, so that an event loop
// learns of them in epoll and handles them in its own code, between two
// pieces of work, rather than in a handler.
//
// Go delivers signals to a channel; one goroutine moves them into a pending
// set and writes a single wake byte. Each signal is a bit, so a signal that
// arrives twice before the loop looks is one pending flag, as with a C handler
// that sets a sig_atomic_t. The wake write may find the pipe full: that only
// means a wake is already pending, so EAGAIN is ignored there on purpose.
type SelfPipe struct {
	r, w    int
	pending atomic.Uint64
	sigs    chan os.Signal
	done    chan struct{}
	wg      sync.WaitGroup
}

// NewSelfPipe starts catching sigs. Close stops it.
func NewSelfPipe(sigs ...os.Signal) (*SelfPipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &SelfPipe{r: fds[0], w: fds[1], sigs: make(chan os.Signal, 32), done: make(chan struct{})}
	if len(sigs) > 0 { // Notify with none would relay every signal
		signal.Notify(p.sigs, sigs...)
	}
	p.wg.Add(1)
	go p.forward()
	return p, nil
}

func (p *SelfPipe) forward() {
	defer p.wg.Done()
	for {
		select {
		case s := <-p.sigs:
			if n, ok := s.(syscall.Signal); ok {
				p.raise(n)
			}
		case <-p.done:
			return
		}
	}
}

// Fd is the read end, to register for reading in the loop's poller.
func (p *SelfPipe) Fd() int { return p.r }

// raise marks sig pending and wakes the loop, exactly as if it had been
// delivered: what the signal forwarder calls, and what a caller may use to
// inject a signal. Not after Close, whose fds may have been reused by then.
func (p *SelfPipe) raise(sig syscall.Signal) {
	if sig <= 0 || sig >= 64 {
		return
	}
	p.pending.Or(1 << uint(sig))
	for {
		_, err := unix.Write(p.w, []byte{byte(sig)})
		if err != unix.EINTR {
			return // nil, EAGAIN (a wake is pending), or closed at shutdown
		}
	}
}

// Drain empties the pipe and returns the signals raised since the last call,
// as a bit set indexed by signal number. Call it when Fd is readable.
func (p *SelfPipe) Drain() Signals {
	var buf [64]byte
	for {
		n, err := unix.Read(p.r, buf[:])
		if err == unix.EINTR {
			continue
		}
		if n <= 0 {
			break
		}
	}
	return Signals(p.pending.Swap(0))
}

// Close stops catching signals and closes the pipe.
func (p *SelfPipe) Close() error {
	signal.Stop(p.sigs)
	close(p.done)
	p.wg.Wait()
	unix.Close(p.w)
	return unix.Close(p.r)
}

// Signals is a set of signal numbers.
type Signals uint64

// Has reports whether sig is in the set.
func (s Signals) Has(sig syscall.Signal) bool { return s&(1<<uint(sig)) != 0 }
