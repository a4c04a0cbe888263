// Package nethttp runs net/http handlers in procpool's children: Handler
// turns an http.Handler (an http.ServeMux, a router, any middleware chain)
// into a child.Handler. It lives below child so that programs that do not
// use it do not link net/http.
//
// The handler sees what net/http's server would give it: a real
// *http.Request (method, URL with path and raw query, protocol, header with
// canonical keys and repeated fields kept, Host, RemoteAddr, ContentLength,
// a body, a context) and an http.ResponseWriter that is also an
// http.Flusher. The response is the same bytes net/http would send: Date,
// Content-Type sniffed when unset, Content-Length when the handler has
// written at most 2 KiB when it returns and chunked coding otherwise (or
// once it flushes), HEAD without a body, 1xx responses, trailers,
// Connection: close both ways.
//
// # Pool mode
//
// net/http handlers block: they read from databases, wait on locks, stream.
// So they never run on a child's loop thread: Handler's result is a
// child.PoolHandler, and child.Run gives it a pool of DefaultPool worker
// goroutines per child when child.Config.Pool is 0 (-pool N of the usual
// flags sets another size). Each request being served holds a worker, so
// a pool of N serves at most N streams or slow requests at once per child;
// the rest wait for a worker.
//
// # Differences from net/http's server
//
//   - A panic in a handler is logged, with its stack, and answered with
//     500 Internal Server Error and Connection: close when nothing of the
//     response has been written yet (net/http closes the connection without
//     an answer); http.ErrAbortHandler closes the connection unlogged. The
//     child goes on.
//   - Hijacking is refused: the ResponseWriter is not an http.Hijacker
//     (http.ResponseController.Hijack returns http.ErrNotSupported), so
//     WebSocket libraries that hijack do not work. Neither are read or
//     write deadlines nor full duplex supported through the controller.
//   - The request body has been read whole, within the child's -max-body,
//     before the handler runs; Expect: 100-continue is answered by the
//     child as soon as the header is complete, not when the handler first
//     reads the body, and an unread body never costs the connection.
//   - The context carries no values (http.ServerContextKey and
//     http.LocalAddrContextKey are not set). It is cancelled when the
//     client closes the connection, when the child stops, when the child
//     drains (a graceful stop or reload) while the response is streaming
//     (it has been flushed), and when the handler returns. Watching the
//     connection starts the first time the handler calls Done or Err.
//   - Request and ResponseWriter objects are reused: a handler must not
//     touch the *http.Request, the ResponseWriter or its Header after
//     ServeHTTP returns (net/http's rule, here enforced by reuse). Copies
//     made with Request.WithContext or Clone, the URL, the request's Header
//     map, its strings and its body reader are the request's own and may
//     outlive it (http.TimeoutHandler relies on that); the body reads as
//     closed once the handler has returned.
//   - Request trailers are not given to the handler (Request.Trailer is
//     nil); response trailers are supported.
package nethttp

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"

	"github.com/procpool/procpool/child"
)

// DefaultPool is the number of worker goroutines per child that Handler
// asks for when child.Config.Pool is 0.
const DefaultPool = 64

// Handler returns a child.Handler that serves h as net/http's server would
// (nil: http.DefaultServeMux). It is a child.PoolHandler: it always runs in
// pool mode.
func Handler(h http.Handler) child.Handler {
	if h == nil {
		h = http.DefaultServeMux
	}
	return &adapter{h: h}
}

type adapter struct{ h http.Handler }

// PoolSize makes child.Run start a pool when the configuration has none.
func (a *adapter) PoolSize() int { return DefaultPool }

var states = sync.Pool{New: func() any { return newState() }}

// Serve answers one request.
func (a *adapter) Serve(cw *child.Response, cr *child.Request) {
	st := states.Get().(*state)
	st.serve(a.h, cw, cr)
	states.Put(st)
}

// state is everything one request needs that can be reused by the next:
// a pool of them serves the workers.
type state struct {
	req  http.Request // reused: reset from tmpl for every request
	tmpl http.Request // zero but for the context
	ctx  reqCtx
	rw   response
	body *body // the request's body reader; nil for none

	scratch []byte
	fields  []field
	head    []byte // a header being built
	kvs     []keyValues
	clen    [20]byte
	dateBuf []byte
	dateSec int64
	cbuf    []byte // ReadFrom's copy buffer
}

func newState() *state {
	st := &state{scratch: make([]byte, 0, 1024), head: make([]byte, 0, 512)}
	st.tmpl = *new(http.Request).WithContext(&st.ctx)
	st.rw.handlerHeader = make(http.Header)
	st.rw.w = bufio.NewWriterSize(io.Discard, bufferBeforeChunkingSize)
	return st
}

func (st *state) copyBuf() []byte {
	if st.cbuf == nil {
		st.cbuf = make([]byte, 32<<10)
	}
	return st.cbuf
}

func (st *state) serve(h http.Handler, cw *child.Response, cr *child.Request) {
	if !st.buildRequest(cr, cw) {
		// net/http's answer to a target that is not a URL.
		const bad = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request"
		cw.SetStatus(http.StatusBadRequest)
		cw.WriteRaw([]byte(bad))
		cw.Close()
		st.release()
		return
	}
	req := &st.req
	w := &st.rw
	w.reset(st, cw, req)
	st.ctx.begin(cw)

	if e := headerGet(req.Header, "Expect"); e != "" && !hasToken(e, "100-continue") {
		// RFC 9110 §10.1.1: an expectation the server cannot meet.
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusExpectationFailed)
	} else if req.RequestURI == "*" && req.Method == http.MethodOptions {
		w.Header().Set("Content-Length", "0") // net/http's globalOptionsHandler
	} else if p := st.call(h, w, req); p != nil {
		st.ctx.end()
		st.panicked(p)
		st.release()
		return
	}
	st.ctx.end()
	w.finishRequest()
	st.release()
}

// call runs the handler and returns what it panicked with, or nil. The
// stack is logged from the deferred function, where it still shows where
// the panic happened.
func (st *state) call(h http.Handler, w *response, req *http.Request) (p any) {
	defer func() {
		if p = recover(); p != nil && p != http.ErrAbortHandler {
			buf := make([]byte, 64<<10)
			buf = buf[:runtime.Stack(buf, false)]
			logf("http: panic serving %v: %v\n%s", req.RemoteAddr, p, buf)
		}
	}()
	h.ServeHTTP(w, req)
	return nil
}

// panicked answers 500 if nothing of the response has been written;
// otherwise the connection closes after what was written (the client sees
// an incomplete response), as it does for http.ErrAbortHandler.
func (st *state) panicked(p any) {
	w := &st.rw
	cw := w.cw
	cw.Close()
	if w.chunk.wroteHeader || p == http.ErrAbortHandler {
		cw.WriteRaw(nil) // nothing of the child's own
		return
	}
	req := &st.req
	w.reset(st, cw, req)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Connection", "close")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintln(w, http.StatusText(http.StatusInternalServerError))
	w.finishRequest()
}

// release drops what the request referred to: the child's buffers are
// reused once the handler returns.
func (st *state) release() {
	if st.body != nil {
		st.body.Close()
		st.body = nil
	}
	st.req = st.tmpl
	st.rw.cw, st.rw.req = nil, nil
	st.rw.w.Reset(io.Discard)
	st.fields = st.fields[:0]
	clear(st.rw.handlerHeader)
	clear(st.rw.chunk.header)
	if cap(st.scratch) > 64<<10 {
		st.scratch = make([]byte, 0, 1024)
	}
}

var _ http.Flusher = (*response)(nil)
var _ io.StringWriter = (*response)(nil)
