package child

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// pool runs handlers on worker goroutines: the half-sync/half-async split.
// The loop hands a ready connection to a worker; the worker reads, runs the
// handler, writes, and hands the connection back with what to do next. Only
// the loop re-arms or closes, so the fd table has one owner. Because the
// connection is EPOLLONESHOT, no event can fire for it while a worker holds
// it: one connection is only ever worked on by one goroutine at a time.
type pool struct {
	work    chan *conn
	done    chan finished
	wake    int // eventfd: a worker finished something
	backlog []*conn
	loop    *loop
	quit    chan struct{} // closed when the pool stops: Response.Done fires
	unread  atomic.Int32  // results in done that the loop has not taken
	woken   atomic.Bool   // the eventfd has been written since the loop last read it
	wg      sync.WaitGroup
}

type finished struct {
	c *conn
	a action
}

func newPool(n int, h Handler, l *loop) (*pool, error) {
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	p := &pool{
		work: make(chan *conn, n),
		done: make(chan finished, 4*n),
		wake: wake,
		loop: l,
		quit: make(chan struct{}),
	}
	for i := 0; i < n; i++ {
		s := newSession(h, l.cfg.Stats, &l.cfg.Limits, &l.cfg.Timeouts, &l.draining)
		s.shared = true
		s.goaway = &l.goaway
		s.resp.quit = p.quit
		s.alog = newLogBuf(l.cfg.AccessLog)
		p.wg.Add(1)
		go p.worker(s)
	}
	return p, nil
}

func (p *pool) worker(s *session) {
	defer p.wg.Done()
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	defer func() {
		if s.alog != nil {
			s.alog.flush(time.Now())
		}
	}()
	// An idle worker still writes its pending access log lines once they
	// are a second old, as the loop does: without the ticker they would
	// wait for the worker's next connection, however long that takes.
	var flush <-chan time.Time
	if s.alog != nil {
		t := time.NewTicker(logFlushEvery)
		defer t.Stop()
		flush = t.C
	}
	for {
		var c *conn
		select {
		case now := <-flush:
			s.alog.tick(now)
			continue
		case w, ok := <-p.work:
			if !ok {
				return
			}
			c = w
		}
		a := s.serve(c)
		if s.alog != nil {
			s.alog.tick(s.clk.now)
		}
		p.unread.Add(1)
		p.done <- finished{c, a}
		p.wakeLoop(one)
	}
}

// wakeLoop tells the loop that results wait, unless it has been told
// already or has taken them meanwhile. The worker yields first, so that
// the other workers that are ready finish before the loop wakes: in a
// pinned child the loop and the workers share one CPU, and a wake for
// every result would have the woken loop preempt the workers' thread after
// each request, the two taking turns once per request.
func (p *pool) wakeLoop(one []byte) {
	runtime.Gosched()
	if p.unread.Load() > 0 && !p.woken.Swap(true) {
		// EAGAIN would mean the counter is full, so a wake is pending anyway.
		unix.Write(p.wake, one)
	}
}

// submit gives c to a worker, or queues it when all are busy: the loop never
// blocks.
func (p *pool) submit(c *conn) {
	c.busy = true
	select {
	case p.work <- c:
	default:
		p.backlog = append(p.backlog, c)
	}
}

// collect applies what the workers finished and hands out queued work.
func (p *pool) collect() {
	var buf [8]byte
	unix.Read(p.wake, buf[:])
	// Cleared after the read: a worker that finds it set has sent its
	// result before this, and the loop takes it below.
	p.woken.Store(false)
	for {
		select {
		case f := <-p.done:
			p.unread.Add(-1)
			f.c.busy = false
			p.loop.apply(f.c, f.a)
			continue
		default:
		}
		break
	}
	for len(p.backlog) > 0 {
		select {
		case p.work <- p.backlog[0]:
			p.backlog = p.backlog[1:]
			continue
		default:
		}
		break
	}
}

func (p *pool) stop() {
	close(p.quit) // handlers that wait on Response.Done return
	close(p.work)
	// Workers may be blocked handing back results; take them.
	go func() {
		for range p.done {
		}
	}()
	p.wg.Wait()
	close(p.done)
	unix.Close(p.wake)
}
