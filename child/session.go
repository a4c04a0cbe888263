package child

import (
	"bytes"
	"sync/atomic"

	"github.com/procpool/procpool/ipc"

	"golang.org/x/sys/unix"
)

// session is everything needed to serve connections on one thread: the loop
// has one, and in pool mode so does every worker. Its buffers are shared by
// all the connections it serves, one event at a time.
type session struct {
	h         Handler
	st        *ipc.Cell
	alog      *logBuf // nil without an access log
	lim       *Limits
	to        *Timeouts
	draining  *atomic.Bool
	goaway    *atomic.Bool
	shared    bool // a pool worker's: others publish requests in the same cell
	clk       clock
	missed    bool   // the last read found nothing (EAGAIN)
	lastStart int64  // the start published for the last request (Cell.Begin)
	rbuf      []byte // every read lands here unless a partial request waits
	wbuf      []byte // the responses of one event, sent with one write
	req       Request
	resp      Response
}

const (
	readSize = 64 << 10
	// maxBatch stops parsing pipelined requests once this much output waits,
	// so a deep pipeline cannot grow the write buffer without bound.
	maxBatch = 64 << 10
	// lingerBytes bounds what a rejected client may still send us.
	lingerBytes = 64 << 10
)

func newSession(h Handler, st *ipc.Cell, lim *Limits, to *Timeouts, draining *atomic.Bool) *session {
	s := &session{
		h: h, st: st, lim: lim, to: to, draining: draining,
		rbuf: make([]byte, readSize),
		wbuf: make([]byte, 0, maxBatch+bufSize),
		req:  Request{headers: make([]field, 0, 32)},
	}
	s.clk.tick()
	return s
}

// process answers the complete requests at the start of in, appending their
// responses to out. It stops at the first incomplete request, after a
// request that closes the connection, or once it has added maxBatch bytes
// to out. It returns how much of in it consumed.
func (s *session) process(c *conn, in, out []byte) (int, []byte, verdict) {
	done, base := 0, len(out)
	for done < len(in) && len(out)-base < maxBatch {
		if done == 0 && c.scan > 0 && !s.newLine(in, c.scan) {
			break // nothing parse has not seen, bar bytes of an unfinished line
		}
		n, status := c.parse(in[done:], &s.req, s.lim)
		if status != 0 {
			s.st.ParseErrors.Add(1)
			s.st.Responses[status/100].Add(1)
			if s.alog != nil {
				s.alog.add(s.clk.now, c.peer, &s.req, status, errorBodyLen(status))
			}
			return done, appendError(out, status, s.clk.date), vReject
		}
		if n == 0 {
			if s.req.expect && !c.continued && s.req.Method != nil {
				// The client waits for this before it sends the body.
				out = append(out, "HTTP/1.1 100 Continue\r\n\r\n"...)
				c.continued = true
			}
			if c.reqStarted == 0 {
				c.reqStarted = s.clk.now.UnixNano()
			}
			c.scan = 0
			if s.req.headerEnd == 0 {
				c.scan = len(in) - done
			}
			break
		}
		done += n
		c.need, c.continued, c.reqStarted, c.scan = 0, false, 0, 0
		if s.draining.Load() || s.goaway != nil && s.goaway.Load() {
			s.req.close = true
		}
		s.resp.reset()
		s.resp.begin(s, c, out) // a raw response may send itself (stream.go)
		// Requests of one read share the turn's clock; their starts must
		// still differ, since a reader of the cell tells them apart by it.
		s.lastStart = max(s.clk.now.UnixNano(), s.lastStart+1)
		claimed := s.st.BeginFrom(s.lastStart, s.req.Method, s.req.Path, c.knownRemote(), s.shared)
		s.h.Serve(&s.resp, &s.req)
		s.st.End(claimed, s.shared)
		// Draining is checked again: in pool mode a drain can arrive while
		// the handler runs.
		if s.resp.close || s.draining.Load() {
			s.req.close = true
		}
		out = appendResponse(s.resp.end(out), &s.resp, &s.req, s.clk.date)
		s.st.Requests.Add(1)
		if s.alog != nil {
			size := len(s.resp.body)
			switch {
			case isHead(s.req.Method):
				size = 0
			case s.resp.raw:
				size = s.resp.count.rawBodyLen()
			case bodyless(s.resp.status): // appendResponse sends no body
				size = 0
			}
			s.alog.add(s.clk.now, c.peer, &s.req, s.resp.status, size)
		}
		if class := s.resp.status / 100; class > 0 && class < len(s.st.Responses) {
			s.st.Responses[class].Add(1)
		}
		if s.req.close {
			return done, out, vClose
		}
	}
	if done < len(in) && len(out)-base >= maxBatch && c.reqStarted == 0 {
		return done, out, vMore
	}
	return done, out, vKeep
}

// onReadable reads once and answers what arrived.
func (s *session) onReadable(c *conn) action {
	s.clk.tick()
	if c.state == stLinger {
		return s.discard(c)
	}
	own := c.in != nil
	buf := s.rbuf
	if own {
		if len(c.in) == cap(c.in) {
			if !s.growInput(c) {
				return s.reject(c, 413)
			}
		}
		buf = c.in[len(c.in):cap(c.in)]
	}
	n, err := sysRead(c.fd, buf)
	s.missed = err == unix.EAGAIN
	switch {
	case err == unix.EAGAIN:
		return aRead
	case err != nil || n == 0:
		return aClose // EOF, reset or a real error: nothing left to answer
	}
	s.st.BytesIn.Add(uint64(n))
	if own {
		c.in = c.in[:len(c.in)+n]
		return s.answer(c, c.in, true)
	}
	return s.answer(c, s.rbuf[:n], false)
}

// growInput makes room in c.in for the rest of a large request. The buffer
// doubles as bytes arrive, never to more than the request has said it
// needs: memory follows what the client sent, not what it announced. It
// refuses once the request could not fit any limit.
func (s *session) growInput(c *conn) bool {
	max := s.lim.pending()
	if len(c.in) >= max {
		return false
	}
	size := 2 * cap(c.in)
	if c.need > cap(c.in) {
		size = min(size, c.need)
	}
	size = min(size, max)
	b := append(make([]byte, 0, size), c.in...)
	putBuf(c.in)
	c.in = b
	return true
}

// answer parses in (c.in when own, else the shared read buffer), writes the
// responses with one write and decides what the connection waits for next.
func (s *session) answer(c *conn, in []byte, own bool) action {
	if c.proxy >= pxWant {
		rest, a, ok := s.takeProxy(c, in, own)
		if !ok {
			return a
		}
		in = rest
	}
	for {
		if c.need > len(in) {
			return s.keepPartial(c, in, own)
		}
		done, out, v := s.process(c, in, s.wbuf[:0])
		in = in[done:]
		if len(out) > 0 {
			w, err := s.write(c.fd, out)
			if err != nil && err != unix.EAGAIN {
				return aClose
			}
			if w < len(out) {
				s.keepPartial(c, in, own)
				c.out = append(getBuf(len(out)-w), out[w:]...)
				c.after = v
				c.deadline = s.clk.now.Add(s.to.Write).UnixNano()
				return aWrite
			}
		}
		s.shrinkOut(out)
		if a, done := s.finish(c, v, len(in) > 0); done {
			return a
		}
		if v != vMore {
			return s.keepPartial(c, in, own)
		}
	}
}

// keepPartial stores the unparsed rest in c.in (or frees c.in when there is
// none) and sets the read deadline that fits what the connection waits for.
// own says that rest lies inside c.in rather than in the shared read buffer.
// The chunked decoder may have moved the end of rest down (c.body.cut):
// what it left behind is not kept.
func (s *session) keepPartial(c *conn, rest []byte, own bool) action {
	rest = rest[:len(rest)-c.body.cut]
	c.body.cut = 0
	switch {
	case len(rest) == 0:
		c.body.reset()
		if c.in != nil {
			putBuf(c.in)
			c.in = nil
		}
	case own:
		c.in = c.in[:copy(c.in, rest)] // copy is a memmove: overlap is fine
	default:
		c.in = append(getBuf(len(rest)), rest...) // grown as the rest arrives
	}
	now := s.clk.now
	switch {
	case c.in == nil:
		c.deadline = now.Add(s.to.Idle).UnixNano()
	case c.need > 0 || c.body.on:
		c.deadline = now.Add(s.to.Body).UnixNano() // headers done, body arriving
	default:
		c.deadline = c.reqStarted + int64(s.to.Header)
	}
	return aRead
}

// onWritable sends the rest of a response and, once it is out, goes on with
// what the connection had buffered meanwhile.
func (s *session) onWritable(c *conn) action {
	s.clk.tick()
	w, err := s.write(c.fd, c.out)
	if err != nil && err != unix.EAGAIN {
		return aClose
	}
	if w < len(c.out) {
		if cap(c.out) == bufSize {
			c.out = c.out[:copy(c.out, c.out[w:])] // keep the pooled buffer whole
		} else {
			c.out = c.out[w:] // a large tail: no copying it again after every write
		}
		c.deadline = s.clk.now.Add(s.to.Write).UnixNano()
		return aWrite
	}
	putBuf(c.out)
	c.out = nil
	if a, done := s.finish(c, c.after, c.in != nil); done {
		return a
	}
	if c.in != nil {
		return s.answer(c, c.in, true)
	}
	return s.keepPartial(c, nil, false)
}

// reject answers status to the request in c.in and starts a staged close.
func (s *session) reject(c *conn, status int) action {
	s.st.ParseErrors.Add(1)
	s.st.Responses[status/100].Add(1)
	if s.alog != nil {
		s.req.reset()
		parseHead(c.in, &s.req, s.lim) // what the request says of itself, for its line
		s.alog.add(s.clk.now, c.peer, &s.req, status, errorBodyLen(status))
	}
	out := appendError(s.wbuf[:0], status, s.clk.date)
	s.keepPartial(c, nil, false)
	w, err := s.write(c.fd, out)
	if err != nil && err != unix.EAGAIN {
		return aClose
	}
	if w < len(out) {
		c.out = append(getBuf(len(out)-w), out[w:]...)
		c.after = vReject
		c.deadline = s.clk.now.Add(s.to.Write).UnixNano()
		return aWrite
	}
	return s.startLinger(c)
}

// finish ends a connection whose output is flushed, when v says so: after an
// error status, a staged close; after a request that closes the connection,
// a close — staged too if the client sent more behind it (unread), which a
// plain close would answer with a reset before the client read the answer.
// done is false when the connection goes on.
func (s *session) finish(c *conn, v verdict, more bool) (a action, done bool) {
	switch {
	case v == vReject, v == vClose && more:
		s.keepPartial(c, nil, false)
		return s.startLinger(c), true
	case v == vClose:
		return aClose, true
	}
	return aRead, false
}

// startLinger shuts down our side so the client reads its answer and an EOF,
// then keeps reading (and discarding) for a bounded time and size, so that
// data still in flight does not make the kernel reset the connection before
// the client has read the answer (RFC 9112 §9.6).
func (s *session) startLinger(c *conn) action {
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		return aClose
	}
	c.setState(stLinger)
	c.linger = lingerBytes
	c.deadline = s.clk.now.Add(s.to.Linger).UnixNano()
	return aRead
}

func (s *session) discard(c *conn) action {
	n, err := sysRead(c.fd, s.rbuf)
	switch {
	case err == unix.EAGAIN:
		return aRead
	case err != nil || n == 0:
		return aClose
	}
	c.linger -= n
	if c.linger <= 0 {
		return aClose
	}
	return aRead
}

// shrinkOut drops a write buffer that a large response grew, so one big
// answer does not pin its memory for the life of the child.
func (s *session) shrinkOut(out []byte) {
	if cap(out) > 4*(maxBatch+bufSize) {
		s.wbuf = make([]byte, 0, maxBatch+bufSize)
	} else {
		s.wbuf = out[:0]
	}
}

// write sends p and counts what the kernel took.
func (s *session) write(fd int, p []byte) (int, error) {
	n, err := sysWrite(fd, p)
	s.st.BytesOut.Add(uint64(n))
	return n, err
}

// newLine reports whether an incomplete header block (the first scan bytes
// of in were parsed before) may now parse differently: a line was completed,
// or it grew to where a length limit could apply. Until then parse would
// only say "need more" again, so parsing resumes where it stopped and a
// client that trickles bytes costs a byte scan, not a re-parse.
func (s *session) newLine(in []byte, scan int) bool {
	return len(in) > min(s.lim.MaxRequestLine, s.lim.MaxHeaderBytes) ||
		bytes.IndexByte(in[min(scan, len(in)):], '\n') >= 0
}
