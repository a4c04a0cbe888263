package child

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Raw and streamed responses, for handlers that frame their answers
// themselves (child/nethttp answers byte for byte as net/http would) or send
// them while they run (server-sent events, long downloads).
//
// A raw response is the handler's bytes for the wire, status line and
// header included. Flush sends what was written so far, behind the answers
// to earlier pipelined requests of the same read; what is left when the
// handler returns goes out as any response does. Done tells a handler that
// waits when the client has gone or the child is going away.

// PoolHandler is a Handler that blocks (it waits on the network, on a lock,
// on a stream's next event) and so must not run on the loop's thread. Run
// gives it PoolSize() worker goroutines when Config.Pool is 0.
type PoolHandler interface {
	Handler
	PoolSize() int
}

// impliedPool gives a PoolHandler the pool it asks for, unless the
// configuration already chose one.
func impliedPool(c *Config, h Handler) {
	if p, ok := h.(PoolHandler); ok && c.Pool == 0 {
		c.Pool = max(1, p.PoolSize())
	}
}

// ErrNotRaw is returned by Flush on a response that was not written with
// WriteRaw: the child frames those only once the handler has returned.
var ErrNotRaw = errors.New("child: Flush needs a raw response (WriteRaw)")

// rawState is what a response needs to send itself before its handler
// returns. begin sets it up for every request.
type rawState struct {
	raw     bool
	s       *session
	c       *conn
	out     []byte      // the session's output so far: earlier answers of the same read
	flushed atomic.Bool // some of the response has been handed to the kernel
	err     error       // a send failed: what is left is dropped, the connection closes
	watch   *watch      // Done's watcher; nil until Done is called
	quit    <-chan struct{}
	count   rawCount // what the access log counts of it
}

// rawCount is what the access log counts of a raw response: the bytes after
// its head, as nginx's $body_bytes_sent (chunk framing included). With an
// access log, the head is followed as the handler writes it, past any 1xx
// interim heads but 101 to the final one.
type rawCount struct {
	rawLen   int     // raw bytes written, less those a failed Flush dropped
	unsent   int     // of them, how many are at the end of out, not yet sent
	headAt   int     // where the head being followed begins
	headEnd  int     // where the final head ends, when headDone
	headDone bool    // the final head has been seen
	matched  int     // bytes of "\r\n\r\n" ending what was followed
	code     [3]byte // the status code of the head being followed
}

// begin prepares w for the request the session is about to hand its
// handler; out is what the session has produced before it.
func (w *Response) begin(s *session, c *conn, out []byte) {
	w.raw, w.s, w.c, w.out, w.err, w.watch = false, s, c, out, nil, nil
	w.flushed.Store(false)
	w.count = rawCount{}
}

// end closes Done and returns the session's output once the handler has
// returned: out as it was, unless a Flush sent it (and then whatever is
// still unsent).
func (w *Response) end(out []byte) []byte {
	if w.watch != nil {
		w.watch.finish()
		w.watch = nil
	}
	if w.flushed.Load() || w.err != nil {
		out = w.out
	}
	w.out, w.c, w.s = nil, nil, nil
	return out
}

// WriteRaw appends p to the response as bytes for the wire. Once a handler
// calls it, the child sends what the handler wrote and nothing of its own:
// no status line, no header, no framing. The handler is responsible for a
// complete, correctly framed message (a Content-Length, chunked coding, or
// Close for a body that ends with the connection), with no body for a HEAD
// request, and for Connection: close when it calls Close or KeepAlive is
// false. SetStatus still names the status for the counters and the access
// log, which counts as the body's size the bytes after the head (past any
// 1xx interim response other than 101), as nginx does. Writes after a
// failed Flush are dropped.
func (w *Response) WriteRaw(p []byte) {
	w.raw = true
	if w.err == nil {
		if !w.count.headDone && w.s != nil && w.s.alog != nil {
			w.count.followHead(p)
		}
		w.count.rawLen += len(p)
		w.body = append(w.body, p...)
	}
}

// followHead follows a raw response's head through p, the next bytes the
// handler wrote, to the blank line that ends it. A 1xx head other than 101
// Switching Protocols is interim: the final head follows it.
func (w *rawCount) followHead(p []byte) {
	base := w.rawLen // where p begins in the response
	w.readCode(p, base)
	for i := 0; i < len(p); i++ {
		if w.matched == 0 { // only a CR can begin the blank line
			j := bytes.IndexByte(p[i:], '\r')
			if j < 0 {
				return
			}
			i += j
		}
		switch b := p[i]; {
		case b == "\r\n\r\n"[w.matched]:
			w.matched++
		case b == '\r':
			w.matched = 1
		default:
			w.matched = 0
		}
		if w.matched < 4 {
			continue
		}
		w.matched = 0
		if w.code[0] == '1' && string(w.code[:]) != "101" {
			w.headAt, w.code = base+i+1, [3]byte{}
			w.readCode(p, base)
			continue
		}
		w.headEnd, w.headDone = base+i+1, true
		return
	}
}

// readCode takes what p, which begins at base in the response, holds of the
// status code of the head being followed ("HTTP/1.1 200": bytes 9 to 11).
func (w *rawCount) readCode(p []byte, base int) {
	for k := range w.code {
		if at := w.headAt + len("HTTP/1.1 ") + k - base; at >= 0 && at < len(p) {
			w.code[k] = p[at]
		}
	}
}

// rawBodyLen is what the access log counts of a raw response.
func (w *rawCount) rawBodyLen() int {
	if !w.headDone {
		return 0
	}
	return max(0, w.rawLen-w.headEnd)
}

// Pending is the number of raw bytes written and not yet flushed.
func (w *Response) Pending() int { return len(w.body) }

// Flush sends the raw bytes written so far (WriteRaw), behind any answers
// to earlier pipelined requests that wait for the same write. In pool mode
// it returns once the kernel has taken all of it, waiting at most the write
// timeout for each step of progress; in inline mode it sends what the socket
// takes at once and leaves the rest for when the handler returns, so that
// the loop never waits for a client. In an Exchanger the bytes stay in its
// output. An error means the client is gone or too slow: what is left is
// dropped and the connection closes after the handler returns.
func (w *Response) Flush() error {
	if w.err != nil {
		return w.err
	}
	if !w.raw {
		return ErrNotRaw
	}
	w.flushed.Store(true)
	w.count.unsent += len(w.body) // out ends with this response's bytes
	w.out = append(w.out, w.body...)
	w.body = w.body[:0]
	if w.s == nil || w.c == nil || w.c.borrowed || len(w.out) == 0 {
		return nil
	}
	p := w.out
	for len(p) > 0 {
		n, err := w.s.write(w.c.fd, p)
		p = p[n:]
		w.count.unsent = min(w.count.unsent, len(p))
		switch {
		case err == nil:
		case err == unix.EAGAIN && !w.s.shared:
			w.out = w.out[:copy(w.out, p)]
			return nil
		case err == unix.EAGAIN:
			if err := waitWritable(w.c.fd, w.s.to.Write); err != nil {
				return w.fail(err)
			}
		default:
			return w.fail(err)
		}
	}
	w.out = w.out[:0]
	return nil
}

// ErrWriteTimeout is what Flush returns when the client took nothing for
// the write timeout.
var ErrWriteTimeout = errors.New("child: write timeout")

func (w *Response) fail(err error) error {
	w.count.rawLen -= w.count.unsent // never sent: the log counts what the kernel took
	w.count.unsent = 0
	w.err = err
	w.close = true
	w.out = w.out[:0]
	w.body = w.body[:0]
	return err
}

// waitWritable waits until fd can take more, or the timeout passes.
func waitWritable(fd int, timeout time.Duration) error {
	ms := int(timeout / time.Millisecond)
	if ms <= 0 {
		ms = -1
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		n, err := unix.Poll(pfd, ms)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return ErrWriteTimeout
		}
		return nil // POLLERR and POLLHUP too: the next write says what happened
	}
}

// Draining reports whether the connection closes after this response for
// the child's sake: it has begun a graceful stop, or one has been announced
// (the master's go-away). A raw response then says Connection: close.
func (w *Response) Draining() bool {
	return w.s != nil && (w.s.draining.Load() || w.s.goaway != nil && w.s.goaway.Load())
}

// Done returns a channel that is closed when the request is over for the
// handler: it returned, the client closed or reset the connection, or the
// child stops (a fast stop, or a graceful one once the response has been
// flushed, as a stream's has: a stream ends only when told). It is for
// handlers that wait (a stream's next event, a long poll, a slow backend):
// the first call starts watching the connection, which costs a few system
// calls; handlers that never call it pay nothing. In an Exchanger it closes
// only when the handler returns.
func (w *Response) Done() <-chan struct{} {
	if w.watch == nil {
		w.watch = newWatch(w)
	}
	return w.watch.done
}

// watchTick is how often a watcher looks at the child's state between
// events on the connection.
const watchTick = 200 * time.Millisecond

// watch closes done when the client goes away or the child stops, from a
// goroutine that waits for the connection to signal a close through the
// runtime's poller, on a duplicate of its fd (the loop's epoll registration
// is untouched).
type watch struct {
	done chan struct{}
	once sync.Once
	f    *os.File // nil when the connection cannot be watched
}

func newWatch(w *Response) *watch {
	wt := &watch{done: make(chan struct{})}
	if w.s == nil || w.c == nil || w.c.borrowed {
		return wt
	}
	fd, err := unix.FcntlInt(uintptr(w.c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return wt
	}
	wt.f = os.NewFile(uintptr(fd), "client")
	rc, err := wt.f.SyscallConn()
	if err != nil {
		wt.f.Close()
		wt.f = nil
		return wt
	}
	draining, flushed, quit := w.s.draining, &w.flushed, w.quit
	go func() {
		for {
			if wt.f.SetReadDeadline(time.Now().Add(watchTick)) != nil {
				return // closed: the handler returned
			}
			err := rc.Read(peerClosed)
			switch {
			case err == nil:
				wt.close() // the client closed or reset
				return
			case !errors.Is(err, os.ErrDeadlineExceeded):
				return
			}
			select {
			case <-quit:
				wt.close()
				return
			default:
			}
			if draining.Load() && flushed.Load() {
				wt.close()
				return
			}
		}
	}()
	return wt
}

func (wt *watch) close() { wt.once.Do(func() { close(wt.done) }) }

// finish ends the watch when the handler returns.
func (wt *watch) finish() {
	wt.close()
	if wt.f != nil {
		wt.f.Close()
	}
}

// peerClosed reports whether the client has closed its side (or reset the
// connection), whatever it sent before: it is a rc.Read callback, so false
// means "wait for the next event".
func peerClosed(fd uintptr) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
}
