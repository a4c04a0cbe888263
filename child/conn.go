package child

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// conn is the state of one client connection. An idle keep-alive connection
// owns no buffer: in and out are taken from bufPool only while a partial
// request or an unsent response has to outlive one event.
type conn struct {
	fd    int
	state connState
	in    []byte // a partial request carried to the next read; nil when none
	out   []byte // response bytes the kernel has not taken yet; nil when none
	after verdict

	need       int        // len(in) below which parsing cannot succeed
	body       bodyState  // a chunked body in progress, decoded as it arrives
	borrowed   bool       // the input is a caller's (Exchanger): parse only whole requests, never keep state
	deadline   int64      // unix nanoseconds when the connection times out
	reqStarted int64      // when the request in progress began; 0 when idle
	continued  bool       // 100 Continue already sent for the request in progress
	scan       int        // bytes of an incomplete header block already seen; 0 when none
	linger     int        // bytes still accepted while lingering
	busy       bool       // a pool worker holds it; the loop keeps its hands off
	polled     bool       // in the epoll set (it is not while first served)
	pending    bool       // in holds bytes another child read and nobody parsed yet
	peer       netip.Addr // the client: the socket's peer, or what a PROXY header said

	// Where the connection comes from (proxyproto.go): peer above, and
	port      uint16 // the client's port
	peerKnown bool   // peer and port are set (they are looked up when first needed)
	proxy     uint8  // what is expected of a PROXY header
}

// parse parses the next request from buf, which starts with what the
// connection kept (see parseRequest).
func (c *conn) parse(buf []byte, r *Request, lim *Limits) (int, int) {
	if c.borrowed {
		return parse(buf, r, lim, &c.need)
	}
	n, status := parseRequest(buf, r, lim, &c.need, &c.body, true)
	r.from = c
	return n, status
}

// connState is where a connection is in its life. Every change goes through
// setState; the moves are:
//
//	stFree    → stReading                      register: a new or handed-on connection
//	stReading → stReading, stWriting, stLinger  after a read: more to read, a tail to write, a staged close
//	stWriting → stReading, stWriting, stLinger  after a write: the same
//	stLinger  → stLinger                       reading to discard until the linger ends
//	stReading → stHanded                       a retiring child queues it for the master
//	any       → stFree                         closed, or handed back (closeConn)
type connState uint8

const (
	stFree    connState = iota // not in use: the zero value, in the spare list
	stReading                  // armed for EPOLLIN
	stWriting                  // armed for EPOLLOUT, out holds the tail
	stLinger                   // write side shut down, reading to discard
	stHanded                   // out of the poll set, waiting to go back to the master
)

var stateMoves = [...][]connState{
	stFree:    {stReading},
	stReading: {stReading, stWriting, stLinger, stHanded},
	stWriting: {stReading, stWriting, stLinger},
	stLinger:  {stLinger},
	stHanded:  {},
}

// setState moves c to state to. A move the table above does not list is a
// bug in the loop; tests run with checkMoves set and fail on it.
func (c *conn) setState(to connState) {
	if checkMoves && !slices.Contains(stateMoves[c.state], to) {
		panic(fmt.Sprintf("child: connection %d moved from state %d to %d", c.fd, c.state, to))
	}
	c.state = to
}

// checkMoves turns setState's check on (tests only: the loop's decisions
// are tested, not paid for on every request).
var checkMoves = false

// verdict is what happens to a connection once its output is flushed.
type verdict uint8

const (
	vKeep   verdict = iota // keep reading
	vClose                 // close (Connection: close, HTTP/1.0, draining)
	vReject                // an error status was sent: staged close
	vMore                  // output bound reached: more requests wait in the input
)

// bufSize is the size of pooled buffers; larger ones are allocated on demand
// and left to the collector.
const bufSize = 4 << 10

// maxFreeBufs bounds what the pool keeps after a burst.
const maxFreeBufs = 1024

// bufs is a free list of bufSize buffers shared by a child's loop and its
// workers. A plain list under a mutex rather than a sync.Pool: putting a
// slice into a sync.Pool allocates its header, and this path must not.
var bufs struct {
	sync.Mutex
	free [][]byte
}

// getBuf returns an empty buffer with room for at least n bytes.
func getBuf(n int) []byte {
	if n > bufSize {
		return make([]byte, 0, n)
	}
	bufs.Lock()
	if k := len(bufs.free); k > 0 {
		b := bufs.free[k-1]
		bufs.free = bufs.free[:k-1]
		bufs.Unlock()
		return b
	}
	bufs.Unlock()
	return make([]byte, 0, bufSize)
}

// putBuf recycles b if it has the pooled size.
func putBuf(b []byte) {
	if cap(b) != bufSize {
		return
	}
	bufs.Lock()
	if len(bufs.free) < maxFreeBufs {
		bufs.free = append(bufs.free, b[:0])
	}
	bufs.Unlock()
}

// releaseBuffers returns the connection's buffers to the pool.
func (c *conn) releaseBuffers() {
	if c.in != nil {
		putBuf(c.in)
		c.in = nil
	}
	if c.out != nil {
		putBuf(c.out)
		c.out = nil
	}
}
