// Package child is the worker side of procpool: an epoll loop on one locked
// OS thread that takes connections from the master (or from its own
// SO_REUSEPORT listener) and serves HTTP/1.1 on them with a Handler.
package child

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/epoll/sched"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// action is what the loop does with a connection after an event on it.
type action uint8

const (
	aRead  action = iota // re-arm for reading
	aWrite               // re-arm for writing: output is pending
	aClose               // close it
)

const (
	connEvents  = epoll.In | epoll.RDHup | epoll.OneShot
	writeEvents = epoll.Out | epoll.OneShot
)

// ErrMasterGone is returned by Run when the channel to the master closes.
var ErrMasterGone = errors.New("child: master closed the channel")

type loop struct {
	cfg      Config
	poller   *epoll.Poller
	ch       *ipc.Channel
	conns    []*conn // indexed by fd
	spare    []*conn // conn structs to reuse
	open     int
	events   []epoll.Event
	fds      []int
	sess     *session
	pool     *pool // nil in inline mode
	draining atomic.Bool
	goaway   atomic.Bool // a stop is coming (CmdGoAway): every answer says Connection: close
	sweepAt  int64
	// listening: the own listener (reuseport) is in the poll set, as
	// updateListening decides once a turn; rest is the pause after EMFILE.
	listening   bool
	rest        ipc.AcceptRest
	lastAccepts bool  // drain is taking what is queued on the own listener
	drainBy     int64 // when idle connections of a draining child close
	sig         *ipc.SelfPipe
	turns       uint64 // published in the stats cell: the master's sign of progress
	yield       sched.Yielder
	pid         int
	early       earlyReads
	// Hand-back (handback.go): retiring is set by the master's CmdRetire;
	// back holds connections waiting to go back to the master, sentBatch
	// those of the batch being sent.
	retiring  bool
	retireBy  int64
	back      []*conn
	sentBatch []*conn

	// freshNoDelay: whether fresh connections come with TCP_NODELAY
	// (noDelay): 0 not known yet, 1 they do, -1 they do not.
	freshNoDelay int8
}

// Run serves until the master tells the child to stop (nil after a drain) or
// goes away (ErrMasterGone). It locks the calling goroutine to its OS thread
// for good: the loop, its epoll set and the CPU pinning belong to that thread.
func Run(cfg Config, h Handler) error {
	runtime.LockOSThread()
	sched.SpareP() // a pinned child starts with GOMAXPROCS 1
	cfg.setDefaults()
	impliedPool(&cfg, h) // a PoolHandler never runs inline (stream.go)
	l, err := newLoop(cfg, h)
	if err != nil {
		return err
	}
	defer l.close()
	err = l.ch.Send(ipc.Msg{Cmd: ipc.CmdReady, Pid: int32(l.pid), Slot: int32(cfg.Slot)}, nil)
	if err != nil {
		return fmt.Errorf("child: announce ready: %w", err)
	}
	if err := l.run(); err != errStopped {
		return err
	}
	return nil
}

func newLoop(cfg Config, h Handler) (*loop, error) {
	p, err := epoll.Open()
	if err != nil {
		return nil, err
	}
	l := &loop{
		cfg:    cfg,
		poller: p,
		ch:     ipc.NewChannel(cfg.Channel),
		events: make([]epoll.Event, 256),
		fds:    make([]int, 0, ipc.MaxFds),
		pid:    os.Getpid(),
	}
	l.sess = newSession(h, l.cfg.Stats, &l.cfg.Limits, &l.cfg.Timeouts, &l.draining)
	l.sess.goaway = &l.goaway
	l.sess.alog = newLogBuf(cfg.AccessLog)
	// Signals come from the master's fallback path or from a terminal that
	// signals the whole process group; the master decides the rest.
	signal.Ignore(unix.SIGHUP, unix.SIGUSR2, unix.SIGTTIN, unix.SIGTTOU)
	if l.sig, err = ipc.NewSelfPipe(unix.SIGTERM, unix.SIGQUIT, unix.SIGINT, unix.SIGUSR1); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.Add(l.sig.Fd(), epoll.In); err != nil {
		l.sig.Close()
		p.Close()
		return nil, err
	}
	if err := p.Add(cfg.Channel, epoll.In); err != nil {
		l.sig.Close()
		p.Close()
		return nil, err
	}
	if cfg.Listener > 0 {
		// Accepted sockets inherit TCP_NODELAY from their listener.
		unix.SetsockoptInt(cfg.Listener, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := p.Add(cfg.Listener, epoll.In); err != nil {
			l.sig.Close()
			p.Close()
			return nil, err
		}
		l.listening = true
	}
	if cfg.Pool > 0 {
		if l.pool, err = newPool(cfg.Pool, h, l); err != nil {
			l.sig.Close()
			p.Close()
			return nil, err
		}
		if err := p.Add(l.pool.wake, epoll.In); err != nil {
			l.pool.stop()
			l.sig.Close()
			p.Close()
			return nil, err
		}
	}
	return l, nil
}

func (l *loop) run() error {
	for {
		wait := 1000
		if l.resting() {
			wait = int(min(max(0, time.Until(l.rest.Until).Milliseconds()+1), 1000))
		}
		wait = l.retireWait(wait)
		n, err := l.poller.Wait(l.events, wait)
		if err != nil {
			return err
		}
		// The wait may have lasted a second: what this turn adopts is timed
		// from now, not from the last turn.
		l.sess.clk.tick()
		l.turns++
		l.cfg.Stats.Turns.Store(l.turns)
		for i := 0; i < n; i++ {
			ev := &l.events[i]
			switch fd := int(ev.Fd); {
			case fd == l.ch.Fd:
				if err := l.onChannel(false); err != nil {
					return err
				}
			case fd == l.sig.Fd():
				s := l.sig.Drain()
				if s.Has(unix.SIGINT) {
					return errStopped
				}
				if s.Has(unix.SIGTERM) || s.Has(unix.SIGQUIT) {
					l.drain(false)
				}
				if s.Has(unix.SIGUSR1) {
					l.reopen()
				}
			case l.cfg.Listener > 0 && fd == l.cfg.Listener: // 0 means none, and fd 0 may be a client
				l.accept(1)
			case l.pool != nil && fd == l.pool.wake:
				l.pool.collect()
			default:
				l.onConn(fd, ev)
			}
		}
		if l.sess.alog != nil {
			l.sess.alog.tick(l.sess.clk.now)
		}
		now := l.sess.clk.now.UnixNano()
		l.yield.Yield(now)
		if now >= l.sweepAt || l.retiring && now >= l.retireBy {
			l.sweep(now)
			l.sweepAt = now + int64(time.Second)
		}
		l.updateListening()
		l.flushBack()
		if (l.draining.Load() || l.retiring) && l.open == 0 && !l.channelHolds() {
			return nil
		}
	}
}

// onChannel takes one message the master has queued, or with all every
// message until they brought maxAdopt connections or the channel is empty.
//
// The loop takes one message a wake-up: the channel is level-triggered, so
// what is left makes the next Wait return at once, and the recvmsg that
// finds the channel empty is not made (a third of a child's recvmsg calls
// under one request per connection). New connections are served as they
// arrive; a master that keeps the channel full must not keep the loop from
// its other connections, its signals and its sweep.
func (l *loop) onChannel(all bool) error {
	for taken, first := 0, true; taken < maxAdopt && (first || all); first = false {
		m, fds, err := l.ch.Recv(l.fds)
		switch {
		case err == ipc.ErrAgain:
			return nil
		case err == io.EOF:
			return ErrMasterGone
		case err != nil:
			// A malformed message lost nothing we own (Recv closed its fds).
			l.cfg.Log.Error("channel", "err", err)
			continue
		}
		switch m.Cmd {
		case ipc.CmdFds:
			for _, fd := range fds {
				l.register(fd, nil)
			}
			taken += len(fds)
		case ipc.CmdConn:
			l.register(fds[0], l.ch.Data())
			taken++
		case ipc.CmdRetire:
			l.retire(time.Duration(m.Arg) * time.Millisecond)
		case ipc.CmdDrain:
			l.drain(true)
		case ipc.CmdStop:
			return errStopped
		case ipc.CmdReopen:
			l.takeLog(fds)
			l.reopen()
		case ipc.CmdGoAway:
			l.goaway.Store(true)
		case ipc.CmdPing:
			// The master thinks we are stuck: say we are not. A full channel
			// can be ignored, the master wakes for what fills it anyway.
			l.ch.Send(ipc.Msg{Cmd: ipc.CmdPing, Pid: int32(l.pid), Slot: int32(l.cfg.Slot)}, nil)
		}
	}
	return nil
}

// maxAdopt bounds the connections one turn of the loop takes in, from the
// channel or from its own listener.
const maxAdopt = 64

var errStopped = errors.New("child: stopped by the master")

// takeLog puts the log the master reopened (its stderr, sent with
// CmdReopen) in place of the child's stderr, and of its stdout where that
// was the same file. Reopening by path would fail in a child that runs as
// an unprivileged -user, and leave it writing to the rotated file.
func (l *loop) takeLog(fds []int) {
	if len(fds) == 0 {
		return
	}
	if sameFile(1, 2) {
		unix.Dup3(fds[0], 1, 0)
	}
	if err := unix.Dup3(fds[0], 2, 0); err != nil {
		l.cfg.Log.Error("reopen: cannot take the master's log", "err", err)
	}
	unix.Close(fds[0])
}

// sameFile reports whether fds a and b are open on the same file.
func sameFile(a, b int) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func (l *loop) reopen() {
	if l.cfg.Reopen != nil {
		l.cfg.Reopen()
	}
}

// accept takes up to n new connections from the child's own listener
// (reuseport); it reports whether more may be queued.
//
// The loop takes one connection a listener event, as nginx does without
// multi_accept: the listener is level-triggered, so another one queued makes
// the next Wait return at once, while accepting until EAGAIN ended 73% of
// listener events with an accept4 that found nothing (wrk -c64, one request
// per connection, where connections mostly come one at a time).
func (l *loop) accept(n int) bool {
	for i := 0; i < n; i++ {
		fd, err := ipc.Accept(l.cfg.Listener)
		switch err {
		case nil:
			l.register(fd, nil)
			if l.atLimit() && !l.lastAccepts {
				return false // at MaxConns: the rest is for siblings with room
			}
			continue
		case unix.EINTR, unix.ECONNABORTED:
			continue // the peer gave up while queued; take the next one
		case unix.EAGAIN:
		case unix.EMFILE, unix.ENFILE:
			l.rest.Begin(time.Now(), l.cfg.Log, err) // updateListening rests the listener
			l.updateListening()
		default:
			l.cfg.Log.Error("accept", "err", err)
		}
		return false
	}
	return true
}

// register adopts an accepted connection, or one another child handed back
// with carried, the bytes it had already read from it. A draining child
// serves it too (its answer says Connection: close): it was sent before the
// master knew.
func (l *loop) register(fd int, carried []byte) {
	fresh := carried == nil // not handed on by another child (CmdConn)
	if fresh {
		l.noDelay(fd)
	}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*conn, len(l.conns)+64)...)
	}
	c := l.newConn()
	c.fd = fd
	l.admit(c) // the client's address; whether a PROXY header is due (proxyproto.go)
	c.setState(stReading)
	c.deadline = l.sess.clk.now.Add(l.cfg.Timeouts.Header).UnixNano()
	l.conns[fd] = c
	l.open++
	l.cfg.Stats.Accepted.Add(1)
	if fresh {
		l.cfg.Stats.Fresh.Add(1)
	}
	if len(carried) > 0 {
		c.in = append(getBuf(len(carried)), carried...)
		c.pending = true // served from c.in before anything is read
		if l.pool != nil {
			l.pool.submit(c)
			return
		}
		// Its request is in c.in already: no read event would announce it,
		// so it is served now whatever early reads decided, and it says
		// nothing about them.
		l.apply(c, l.sess.serve(c))
		return
	}
	if l.pool != nil || l.lastAccepts || !l.early.try() {
		l.apply(c, aRead)
		return
	}
	a := l.sess.serve(c)
	l.early.note(!l.sess.missed)
	l.apply(c, a)
}

// earlyReads decides whether a new connection is read at once, before it
// is armed. When its request is there already (TCP_DEFER_ACCEPT, a client
// that wrote before the connection reached us), reading at once saves the
// epoll_ctl and the wake-up. When it is not, the read finds nothing
// (EAGAIN) and the connection is armed anyway: one call for nothing. Under
// wrk's one request per connection 80-90% of early reads find nothing: the
// client sends its request after its connect returns, and the connection
// reaches the child, through the master or its own accept, about as early.
// So the loop counts what its early reads find, reads at once while at
// least half find a request, and otherwise arms first, still reading one
// new connection in earlyProbe at once to notice when that changes.
type earlyReads struct {
	tries, misses uint8 // early reads in the current window, and those that found nothing
	skipped       uint8 // new connections armed first since the last probe
	armFirst      bool
}

const (
	earlyWindow = 32 // early reads per decision
	earlyProbe  = 8  // while arming first, one new connection in this many is read at once
)

// try reports whether the next new connection is read at once.
func (e *earlyReads) try() bool {
	if !e.armFirst {
		return true
	}
	if e.skipped++; e.skipped < earlyProbe {
		return false
	}
	e.skipped = 0
	return true
}

// note counts what an early read found: hit is false when it found nothing.
func (e *earlyReads) note(hit bool) {
	e.tries++
	if !hit {
		e.misses++
	}
	if e.tries == earlyWindow {
		e.armFirst = 2*e.misses > e.tries
		e.tries, e.misses = 0, 0
	}
}

// noDelay makes sure a fresh connection (not one handed on by another
// child, which set it already: the option belongs to the socket) has
// TCP_NODELAY: responses go out in one write each, and Nagle would hold the
// next one back. A socket inherits it from its listener, and both the
// master (fdpass) and the child itself (reuseport) set it there, so the
// first fresh connection is asked whether it came with it; when it did,
// fresh connections are taken to come with it from then on, which spares a
// setsockopt per connection. A socket that has no such option (a
// Unix-socket listener's) is not asked again either.
func (l *loop) noDelay(fd int) {
	if l.freshNoDelay == 0 {
		l.freshNoDelay = -1
		if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v != 0 {
			l.freshNoDelay = 1
		}
	}
	if l.freshNoDelay < 0 {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
}

func (l *loop) newConn() *conn {
	if k := len(l.spare); k > 0 {
		c := l.spare[k-1]
		l.spare = l.spare[:k-1]
		return c
	}
	return new(conn)
}

// onConn serves one connection event, inline or through the pool.
func (l *loop) onConn(fd int, ev *epoll.Event) {
	if fd >= len(l.conns) || l.conns[fd] == nil {
		return
	}
	c := l.conns[fd]
	if l.pool != nil {
		l.pool.submit(c)
		return
	}
	l.apply(c, l.sess.serve(c))
}

// serve handles the event a connection was armed for.
func (s *session) serve(c *conn) action {
	if c.pending {
		c.pending = false
		s.clk.tick()
		return s.answer(c, c.in, true)
	}
	if c.out != nil { // a tail to write: the session's own sign, set before apply marks stWriting
		return s.onWritable(c)
	}
	return s.onReadable(c)
}

// apply carries out what serving decided: re-arm or close.
func (l *loop) apply(c *conn, a action) {
	if a == aRead && l.retiring && l.handBackable(c) {
		l.handBack(c)
		return
	}
	if a == aRead && c.state != stLinger {
		c.setState(stReading)
		if l.draining.Load() && c.in == nil && c.out == nil {
			c.deadline = min(c.deadline, l.drainBy) // idle, and we are going away
		}
	}
	var err error
	switch a {
	case aRead:
		err = l.arm(c, connEvents)
	case aWrite:
		c.setState(stWriting)
		err = l.arm(c, writeEvents)
	}
	if a == aClose || err != nil {
		l.closeConn(c)
	}
}

// arm waits for the next event on c: a new registration the first time,
// a re-arm of the one-shot registration after that.
func (l *loop) arm(c *conn, events uint32) error {
	if c.polled {
		return l.poller.Rearm(c.fd, events)
	}
	c.polled = true
	return l.poller.Add(c.fd, events)
}

func (l *loop) closeConn(c *conn) {
	sysClose(c.fd)
	l.conns[c.fd] = nil
	c.releaseBuffers()
	*c = conn{}
	l.spare = append(l.spare, c)
	l.open--
	l.cfg.Stats.Closed.Add(1)
}

// atLimit reports whether the child holds -max-conns connections.
func (l *loop) atLimit() bool { return l.cfg.MaxConns > 0 && l.open >= l.cfg.MaxConns }

// resting reports whether the own listener rests after EMFILE. The turn's
// clock answers no rest without a clock read; while one may still run it
// asks the time afresh: a turn may outlive the pause, and a stale answer
// would leave the listener out for the whole next wait.
func (l *loop) resting() bool {
	return l.cfg.Listener > 0 && l.sess.clk.now.Before(l.rest.Until) && time.Now().Before(l.rest.Until)
}

// updateListening is the one place that decides whether the child's own
// listener (reuseport) is polled: not at -max-conns, so that the kernel's
// queue goes to siblings with room, and not while resting after EMFILE, so
// that a listener that stays readable is not spun on. The loop calls it once
// a turn, and the accept loop when it runs out of fds.
func (l *loop) updateListening() {
	want := l.cfg.Listener > 0 && !l.atLimit() && !l.resting()
	if want == l.listening {
		return
	}
	var err error
	if want {
		err = l.poller.Add(l.cfg.Listener, epoll.In)
	} else {
		err = l.poller.Delete(l.cfg.Listener)
	}
	if err == nil {
		l.listening = want
	}
}

// sweep closes connections whose deadline has passed. Connections with a
// pool worker are skipped: they are not idle.
func (l *loop) sweep(now int64) {
	late := l.retiring && now >= l.retireBy // a retired child's grace is over
	for _, c := range l.conns {
		if c != nil && !c.busy && (late || c.state != stHanded && c.deadline != 0 && c.deadline <= now) {
			l.cfg.Stats.Timeouts.Add(1)
			l.closeConn(c)
		}
	}
	if late {
		l.back = l.back[:0] // closed above
	}
}

// drain stops taking work: idle connections close now, busy ones after the
// response in progress, which carries Connection: close. A drain the master
// did not ask for (a SIGTERM sent to the child itself) is announced to it, so
// that it deals this child nothing more and takes back what is queued.
func (l *loop) drain(asked bool) {
	if l.draining.Load() {
		return
	}
	if !asked {
		if err := l.ch.Send(ipc.Msg{Cmd: ipc.CmdDraining, Pid: int32(l.pid), Slot: int32(l.cfg.Slot)}, nil); err != nil {
			l.cfg.Log.Error("announce drain", "err", err)
		}
	}
	l.closeListener()
	l.draining.Store(true)
	// An idle keep-alive connection is not closed at once: its client may
	// have a request on the wire already, and would see the close instead
	// of an answer. It gets drainIdle to send one, which is answered with
	// Connection: close; the sweep closes those that stay silent.
	l.drainBy = time.Now().Add(drainIdle).UnixNano()
	for _, c := range l.conns {
		if c != nil && !c.busy && c.state == stReading && c.in == nil {
			c.deadline = min(c.deadline, l.drainBy)
		}
	}
}

// closeListener stops accepting on the child's own listener (reuseport).
// What is queued on it is taken first: the kernel resets whatever is still
// queued at the close (unless net.ipv4.tcp_migrate_req moves it to a
// sibling). These are adopted, not served at once, so that the first answer
// of a draining child already says Connection: close, and a retiring child
// hands them back untouched.
func (l *loop) closeListener() {
	if l.cfg.Listener <= 0 {
		return
	}
	l.lastAccepts = true
	for l.accept(maxAdopt) {
	}
	l.lastAccepts = false
	if l.listening {
		l.poller.Delete(l.cfg.Listener)
		l.listening = false
	}
	unix.Close(l.cfg.Listener)
	l.cfg.Listener = -1
}

// channelHolds takes what is still queued on the channel and reports
// whether that gave the child something to do. A draining child asks before
// it exits: connections the master sent before it learnt of the drain are
// served, not left behind.
func (l *loop) channelHolds() bool {
	before := l.cfg.Stats.Accepted.Load()
	if err := l.onChannel(true); err != nil {
		return false
	}
	return l.cfg.Stats.Accepted.Load() != before || l.open > 0
}

// drainIdle is how long a draining child keeps an idle connection open.
const drainIdle = time.Second

func (l *loop) close() {
	if l.pool != nil {
		l.pool.stop()
	}
	if l.sess.alog != nil {
		l.sess.alog.flush(time.Now())
	}
	for _, c := range l.conns {
		if c != nil {
			l.closeConn(c)
		}
	}
	l.sig.Close()
	l.poller.Close()
}
