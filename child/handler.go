package child

// Handler answers requests. It is handed a request whose slices are valid only
// until it returns, and a response to fill; the child frames and sends the
// response after the handler returns.
//
// In the default inline mode a handler runs on the child's event-loop thread
// and must not block: every other connection of the child waits while it
// runs. A handler that blocks (a database call, a sleep, a lock) belongs in
// pool mode (Config.Pool > 0), where handlers run on worker goroutines.
type Handler interface {
	Serve(w *Response, r *Request)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(w *Response, r *Request)

// Serve calls f(w, r).
func (f HandlerFunc) Serve(w *Response, r *Request) { f(w, r) }
