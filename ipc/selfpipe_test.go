package ipc_test

import (
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

func newSelfPipe(t *testing.T, sigs ...os.Signal) *ipc.SelfPipe {
	t.Helper()
	p, err := ipc.NewSelfPipe(sigs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// readable polls fd for up to limit.
func readable(t *testing.T, fd int, limit time.Duration) bool {
	t.Helper()
	err := waitReadable(fd, limit)
	if err == os.ErrDeadlineExceeded {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// drainAll drains p, checks that it held exactly want and that nothing is
// left after (the pipe quiet, a second Drain empty), and returns what it held.
func drainAll(t *testing.T, p *ipc.SelfPipe, want ipc.Signals) ipc.Signals {
	t.Helper()
	got := p.Drain()
	if got != want {
		t.Errorf("Drain = %#x, want %#x", uint64(got), uint64(want))
	}
	if readable(t, p.Fd(), 0) {
		t.Error("self-pipe still readable after Drain")
	}
	if again := p.Drain(); again != 0 {
		t.Errorf("second Drain = %#x, want empty", uint64(again))
	}
	return got
}

func TestSelfPipeRaise(t *testing.T) {
	p := newSelfPipe(t, syscall.SIGUSR1)
	if readable(t, p.Fd(), 0) {
		t.Fatal("self-pipe readable before anything was raised")
	}
	p.Raise(syscall.SIGUSR1)
	if !readable(t, p.Fd(), 2*time.Second) {
		t.Fatal("self-pipe not readable after Raise")
	}
	if got := drainAll(t, p, 1<<syscall.SIGUSR1); !got.Has(syscall.SIGUSR1) {
		t.Errorf("Drain = %#x, which does not have SIGUSR1", uint64(got))
	}
}

func TestSelfPipeCoalesces(t *testing.T) {
	p := newSelfPipe(t, syscall.SIGUSR1)
	// More raises than the pipe has room for bytes: a full pipe only means a
	// wake is pending, so Raise must neither block nor lose the flag.
	for range 1 << 17 {
		p.Raise(syscall.SIGUSR1)
	}
	p.Raise(syscall.SIGHUP)
	p.Raise(syscall.SIGCHLD)
	drainAll(t, p, 1<<syscall.SIGUSR1|1<<syscall.SIGHUP|1<<syscall.SIGCHLD)
}

func TestSelfPipeIgnoresBadSignals(t *testing.T) {
	p := newSelfPipe(t, syscall.SIGUSR1)
	p.Raise(0)
	p.Raise(64)
	p.Raise(-1)
	if readable(t, p.Fd(), 0) {
		t.Errorf("Raise of an invalid signal woke the pipe; Drain = %#x", uint64(p.Drain()))
	}
}

func TestSelfPipeCatchesSignal(t *testing.T) {
	p := newSelfPipe(t, syscall.SIGUSR2)
	if err := unix.Kill(os.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if !readable(t, p.Fd(), time.Until(deadline)) {
			t.Fatal("SIGUSR2 did not reach the self-pipe within 2s")
		}
		got := p.Drain()
		if got.Has(syscall.SIGUSR2) {
			if got != 1<<syscall.SIGUSR2 {
				t.Errorf("Drain = %#x, want only SIGUSR2", uint64(got))
			}
			return
		}
		if got != 0 {
			t.Fatalf("Drain = %#x, want SIGUSR2", uint64(got))
		}
	}
}

// TestSelfPipeWithoutSignals checks that a self-pipe made for Raise alone
// catches nothing: with no signals given, signal.Notify would otherwise
// relay every signal, including the runtime's own preemption signal.
func TestSelfPipeWithoutSignals(t *testing.T) {
	p := newSelfPipe(t)
	if err := unix.Kill(os.Getpid(), syscall.SIGURG); err != nil {
		t.Fatal(err)
	}
	if readable(t, p.Fd(), 200*time.Millisecond) {
		t.Fatalf("a self-pipe for no signals caught %#x", uint64(p.Drain()))
	}
	p.Raise(syscall.SIGTERM)
	if got := p.Drain(); got != 1<<syscall.SIGTERM {
		t.Errorf("Drain = %#x, want SIGTERM", uint64(got))
	}
}

func TestSelfPipeClose(t *testing.T) {
	// Goroutines of earlier tests may still be on their way out, so count
	// the forwarders themselves rather than every goroutine.
	waitForwarders(t, 0)
	fdsBefore := openFds(t)
	p, err := ipc.NewSelfPipe(syscall.SIGUSR1)
	if err != nil {
		t.Fatal(err)
	}
	opened := openFds(t).diff(fdsBefore)
	waitForwarders(t, 1)
	if !isCloseOnExec(t, p.Fd()) {
		t.Error("self-pipe read end lacks FD_CLOEXEC")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if opened == "" {
		t.Error("NewSelfPipe opened no descriptors")
	}
	checkNoLeak(t, fdsBefore)
	waitForwarders(t, 0)
}

// forwarders counts the goroutines running a self-pipe's signal forwarder.
func forwarders() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "ipc.(*SelfPipe).forward(")
}

// waitForwarders waits until want forwarders run: Close returns once its
// forwarder is done, but the goroutine may take a moment more to exit.
func waitForwarders(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for forwarders() != want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := forwarders(); n != want {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d signal forwarders running, want %d:\n%s", n, want, buf[:runtime.Stack(buf, true)])
	}
}
