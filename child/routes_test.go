package child

import (
	"bytes"
	"strings"
	"sync"
	"sync/atomic"
)

// testRoutes is the handler the Exchanger, socket and pool tests share. It
// answers by path:
//
//	/echo      the request body
//	/close     "bye", and asks for the connection to close
//	/headers   extra headers, two of them with CR/LF (which must be dropped)
//	/big       bigBody (8 MiB)
//	/pad/...   the path followed by 4 KiB of padding
//	/block     waits until release is closed (pool mode only)
//	otherwise  the path itself, so that pipelined answers can be told apart
type testRoutes struct {
	served  atomic.Int64
	entered chan struct{} // /block sends here once it waits
	release chan struct{} // /block returns when this is closed
	once    sync.Once
}

// unblock lets every /block handler return, now and later.
func (h *testRoutes) unblock() { h.once.Do(func() { close(h.release) }) }

func newTestRoutes() *testRoutes {
	return &testRoutes{entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (h *testRoutes) Serve(w *Response, r *Request) {
	h.served.Add(1)
	w.SetContentType("text/plain")
	switch p := string(r.Path); {
	case p == "/echo":
		w.SetContentType("application/octet-stream")
		w.Write(r.Body)
	case p == "/close":
		w.Close()
		w.WriteString("bye")
	case p == "/headers":
		w.AddHeader("X-Good", "yes")
		w.AddHeader("X-Split", "a\r\nX-Injected: 1")
		w.AddHeader("X-Name\r\nX-Injected", "2")
		w.AddHeader("X-Nul", "a\x00b")
		w.SetContentType("text/html\r\nX-Injected: 3")
		w.WriteString("headers")
	case p == "/big":
		w.Write(bigBody())
	case strings.HasPrefix(p, "/pad/"):
		w.Write(r.Path)
		w.Write(padding)
	case p == "/block":
		h.entered <- struct{}{}
		<-h.release
		w.WriteString("released")
	default:
		w.Write(r.Path)
	}
}

var padding = bytes.Repeat([]byte("p"), 4<<10)

// bigBody is 8 MiB that no shifted or dropped piece of would still match.
var bigBody = sync.OnceValue(func() []byte {
	b := make([]byte, 8<<20)
	for i := 0; i < len(b); i += 4 {
		v := uint32(i / 4)
		b[i], b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	return b
})
