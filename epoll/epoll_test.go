package epoll_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/procpool/procpool/epoll"
	"golang.org/x/sys/unix"
)

// waitLimit bounds every wait that expects an event, so a missing event
// fails the test instead of hanging it.
const waitLimit = 5 * time.Second

func openPoller(t *testing.T) *epoll.Poller {
	t.Helper()
	p, err := epoll.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// pipe returns a non-blocking pipe that is closed when the test ends.
func pipe(t *testing.T) (r, w int) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

func writeByte(t *testing.T, fd int) {
	t.Helper()
	if _, err := unix.Write(fd, []byte{'x'}); err != nil {
		t.Fatal(err)
	}
}

func add(t *testing.T, p *epoll.Poller, fd int, events uint32) {
	t.Helper()
	if err := p.Add(fd, events); err != nil {
		t.Fatal(err)
	}
}

// waitOne waits (bounded) for exactly one event and returns it. An
// interrupted Wait returns 0, so it goes round until the deadline.
func waitOne(t *testing.T, p *epoll.Poller) epoll.Event {
	t.Helper()
	buf := make([]epoll.Event, 4)
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		n, err := p.Wait(buf, int(time.Until(deadline)/time.Millisecond)+1)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return buf[0]
		}
		if n > 1 {
			t.Fatalf("Wait returned %d events, want 1: %+v", n, buf[:n])
		}
	}
	t.Fatalf("no event within %v", waitLimit)
	return epoll.Event{}
}

// expectNone checks that nothing is ready right now.
func expectNone(t *testing.T, p *epoll.Poller) {
	t.Helper()
	buf := make([]epoll.Event, 4)
	n, err := p.Wait(buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("Wait(0) returned %d events, want none: %+v", n, buf[:n])
	}
}

func TestOpenIsCloseOnExec(t *testing.T) {
	p := openPoller(t)
	flags, err := unix.FcntlInt(uintptr(p.Fd()), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("epoll fd lacks FD_CLOEXEC")
	}
}

func TestWaitPollsEmpty(t *testing.T) {
	p := openPoller(t)
	r, _ := pipe(t)
	add(t, p, r, epoll.In)
	expectNone(t, p)
}

func TestWaitTimesOutEmpty(t *testing.T) {
	p := openPoller(t)
	r, _ := pipe(t)
	add(t, p, r, epoll.In)
	n, err := p.Wait(make([]epoll.Event, 1), 10)
	if n != 0 || err != nil {
		t.Fatalf("Wait(10ms) on an idle set = %d, %v; want 0, nil", n, err)
	}
}

func TestWaitEmptyBuffer(t *testing.T) {
	p := openPoller(t)
	r, w := pipe(t)
	add(t, p, r, epoll.In)
	writeByte(t, w)
	n, err := p.Wait(nil, -1)
	if n != 0 || err != nil {
		t.Fatalf("Wait(nil) = %d, %v; want 0, nil", n, err)
	}
}

func TestWaitReportsFd(t *testing.T) {
	p := openPoller(t)
	r1, _ := pipe(t)
	r2, w2 := pipe(t)
	add(t, p, r1, epoll.In)
	add(t, p, r2, epoll.In)
	writeByte(t, w2)
	ev := waitOne(t, p)
	if int(ev.Fd) != r2 {
		t.Errorf("event Fd = %d, want %d (the pipe that was written)", ev.Fd, r2)
	}
	if !readable(&ev) || writable(&ev) {
		t.Errorf("event mask %#x: want readable and not writable", ev.Events)
	}
}

func TestWaitWakesOnLaterEvent(t *testing.T) {
	p := openPoller(t)
	r, w := pipe(t)
	add(t, p, r, epoll.In)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(20 * time.Millisecond) // let Wait reach the sleeping call; not needed for correctness
		unix.Write(w, []byte{'x'})
	}()
	ev := waitOne(t, p)
	<-done
	if int(ev.Fd) != r {
		t.Errorf("event Fd = %d, want %d", ev.Fd, r)
	}
}

func TestWaitFillsAtMostBuffer(t *testing.T) {
	p := openPoller(t)
	const pipes = 5
	ready := map[int32]bool{}
	for range pipes {
		r, w := pipe(t)
		add(t, p, r, epoll.In)
		writeByte(t, w)
		ready[int32(r)] = false
	}
	buf := make([]epoll.Event, 2)
	for seen := 0; seen < pipes; {
		n, err := p.Wait(buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 || n > len(buf) {
			t.Fatalf("Wait returned %d with %d of %d reported; want 1..%d", n, seen, pipes, len(buf))
		}
		for _, ev := range buf[:n] {
			if ready[ev.Fd] {
				t.Fatalf("fd %d reported again after Delete", ev.Fd)
			}
			ready[ev.Fd] = true
			// Remove it so that level triggering does not report it again.
			if err := p.Delete(int(ev.Fd)); err != nil {
				t.Fatal(err)
			}
			seen++
		}
	}
	expectNone(t, p)
}

// A Wait that filled its buffer polls first next time (the raw call); one
// that did not goes straight to the call that may sleep. Both must report
// what is ready, and a Wait after a full one must not miss the rest.
func TestWaitAfterFullBuffer(t *testing.T) {
	p := openPoller(t)
	const pipes = 5
	for range pipes {
		r, w := pipe(t)
		add(t, p, r, epoll.In|epoll.OneShot)
		writeByte(t, w)
	}
	buf := make([]epoll.Event, 2)
	deadline := time.Now().Add(waitLimit)
	for seen := 0; seen < pipes; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d ready fds reported", seen, pipes)
		}
		n, err := p.Wait(buf, int(waitLimit/time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if p.PollsFirst() != (n == len(buf)) {
			t.Fatalf("a Wait that reported %d of a buffer of %d: polls first next %v", n, len(buf), p.PollsFirst())
		}
		seen += n // one-shot: each fd is reported once
	}
	expectNone(t, p)
	if p.PollsFirst() {
		t.Error("polls first after a Wait that found nothing")
	}
}

func TestOneShotDisarmsUntilRearm(t *testing.T) {
	p := openPoller(t)
	r, w := pipe(t)
	add(t, p, r, epoll.In|epoll.OneShot)

	writeByte(t, w)
	if ev := waitOne(t, p); int(ev.Fd) != r {
		t.Fatalf("event Fd = %d, want %d", ev.Fd, r)
	}
	// The data is still unread and more arrives, yet the fd stays silent.
	writeByte(t, w)
	expectNone(t, p)

	if err := p.Rearm(r, epoll.In|epoll.OneShot); err != nil {
		t.Fatal(err)
	}
	if ev := waitOne(t, p); int(ev.Fd) != r {
		t.Fatalf("after Rearm: event Fd = %d, want %d", ev.Fd, r)
	}
	expectNone(t, p)
}

func TestRearmChangesMask(t *testing.T) {
	p := openPoller(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	a := fds[0]

	add(t, p, a, epoll.In|epoll.OneShot)
	expectNone(t, p) // nothing to read yet

	if err := p.Rearm(a, epoll.Out|epoll.OneShot); err != nil {
		t.Fatal(err)
	}
	ev := waitOne(t, p)
	if int(ev.Fd) != a || !writable(&ev) {
		t.Fatalf("event %+v: want fd %d writable", ev, a)
	}
}

func TestPeerCloseIsReadable(t *testing.T) {
	p := openPoller(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]) })
	add(t, p, fds[0], epoll.In|epoll.RDHup)
	unix.Close(fds[1])
	ev := waitOne(t, p)
	if ev.Events&(epoll.RDHup|epoll.Hup) == 0 || !readable(&ev) {
		t.Errorf("event mask %#x after peer close: want RDHup or Hup, readable", ev.Events)
	}
}

func TestDelete(t *testing.T) {
	p := openPoller(t)
	r, w := pipe(t)
	add(t, p, r, epoll.In)
	if err := p.Delete(r); err != nil {
		t.Fatal(err)
	}
	writeByte(t, w)
	expectNone(t, p)
}

func TestCtlErrors(t *testing.T) {
	p := openPoller(t)
	r, _ := pipe(t)
	check := func(what string, err error, want unix.Errno) {
		t.Helper()
		var se *os.SyscallError
		if !errors.As(err, &se) || se.Syscall != "epoll_ctl" || !errors.Is(err, want) {
			t.Errorf("%s: err = %v, want epoll_ctl: %v", what, err, want)
		}
	}
	check("Rearm unregistered", p.Rearm(r, epoll.In), unix.ENOENT)
	check("Delete unregistered", p.Delete(r), unix.ENOENT)
	add(t, p, r, epoll.In)
	check("Add twice", p.Add(r, epoll.In), unix.EEXIST)
	check("Add bad fd", p.Add(-1, epoll.In), unix.EBADF)
}

func TestWaitAndRearmDoNotAllocate(t *testing.T) {
	p := openPoller(t)
	r, w := pipe(t)
	add(t, p, r, epoll.In|epoll.OneShot)
	buf := make([]epoll.Event, 8)

	// Something ready: the raw poll path.
	writeByte(t, w)
	allocs := testing.AllocsPerRun(100, func() {
		if err := p.Rearm(r, epoll.In|epoll.OneShot); err != nil {
			t.Fatal(err)
		}
		if n, err := p.Wait(buf, 1000); n != 1 || err != nil {
			t.Fatalf("Wait = %d, %v; want 1 event", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("Rearm+Wait with an event ready: %v allocations per run, want 0", allocs)
	}

	// Nothing ready: the poll finds nothing and the sleeping call times out.
	if err := p.Delete(r); err != nil {
		t.Fatal(err)
	}
	allocs = testing.AllocsPerRun(20, func() {
		if _, err := p.Wait(buf, 1); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Wait timing out: %v allocations per run, want 0", allocs)
	}
}

// readable reports whether the event allows a read to make progress; errors
// and hang-ups count, because the read is what reports them.
func readable(e *epoll.Event) bool { return e.Events&(epoll.In|epoll.RDHup|epoll.Err|epoll.Hup) != 0 }

// writable reports whether the event allows a write to make progress.
func writable(e *epoll.Event) bool { return e.Events&(epoll.Out|epoll.Err|epoll.Hup) != 0 }
