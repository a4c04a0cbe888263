package child

import (
	"sync/atomic"

	"github.com/procpool/procpool/ipc"
)

// Exchanger runs raw request bytes through the same parser, handler call and
// response writer as a child's loop, without sockets: the httptest of
// procpool, for handler tests and benchmarks. It is not safe for concurrent
// use.
type Exchanger struct {
	s    *session
	c    conn
	lim  Limits
	to   Timeouts
	stop atomic.Bool
}

// NewExchanger returns an Exchanger that serves h under the default limits.
func NewExchanger(h Handler) *Exchanger {
	e := &Exchanger{lim: DefaultLimits, to: DefaultTimeouts, c: conn{borrowed: true}}
	e.s = newSession(h, new(ipc.Cell), &e.lim, &e.to, &e.stop)
	return e
}

// Exchange answers every complete request at the start of in (up to the
// child's per-write batch), appends the responses to out and returns them,
// with the number of bytes of in consumed and whether the connection would
// now close. A malformed request is answered with its error status and
// closes.
func (e *Exchanger) Exchange(out, in []byte) ([]byte, int, bool) {
	e.c.need, e.c.scan = 0, 0
	e.s.clk.tick() // as the loop does on every read: the Date stays current
	n, out, v := e.s.process(&e.c, in, out)
	return out, n, v == vClose || v == vReject
}
