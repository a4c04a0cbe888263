package child

import (
	"bytes"
	"net/netip"
)

// Request is one parsed HTTP/1.x request. Its slices point into the
// connection's input buffer and are valid only while the handler runs: a
// handler that keeps any of it must copy it.
type Request struct {
	Method []byte
	Target []byte // the request-target exactly as sent
	Path   []byte // Target up to '?'
	Query  []byte // Target after '?', without it
	Minor  int    // HTTP/1.Minor
	Body   []byte // decoded body (chunked framing removed)

	headers []field
	line    []byte // the request line as sent, without CRLF; nil until complete
	close   bool   // the connection closes after this response
	expect  bool   // Expect: 100-continue
	// headerEnd is where the body starts once the header block is complete
	// and valid; 0 while it is not.
	headerEnd int
	from      *conn // the connection it came on; nil for an Exchanger's
}

type field struct{ name, value []byte }

// Header returns the value of the first header named name (matched without
// regard to case), or nil.
func (r *Request) Header(name string) []byte {
	for i := range r.headers {
		if equalFold(r.headers[i].name, name) {
			return r.headers[i].value
		}
	}
	return nil
}

// Headers calls fn for every header in the order received.
func (r *Request) Headers(fn func(name, value []byte)) {
	for i := range r.headers {
		fn(r.headers[i].name, r.headers[i].value)
	}
}

// KeepAlive reports whether the connection stays open after this request.
func (r *Request) KeepAlive() bool { return !r.close }

// RemoteAddr is the client's address and port: what the PROXY header of a
// trusted balancer said (see ProxyConfig), else the connection's peer. It is
// invalid for a Unix-socket peer that sent no address, and for requests
// served by an Exchanger.
func (r *Request) RemoteAddr() netip.AddrPort {
	if r.from == nil {
		return netip.AddrPort{}
	}
	return r.from.remote()
}

func (r *Request) reset() {
	h := r.headers[:0]
	*r = Request{headers: h}
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// hasToken reports whether the comma-separated list v holds token t
// (case-insensitive), as in Connection: keep-alive, Upgrade.
func hasToken(v []byte, t string) bool {
	for len(v) > 0 {
		var item []byte
		item, v, _ = nextItem(v)
		if equalFold(item, t) {
			return true
		}
	}
	return false
}

// nextItem splits the first element off a comma-separated list: the item,
// without the whitespace around it, and the rest of the list; last is set
// when no comma followed the item.
func nextItem(v []byte) (item, rest []byte, last bool) {
	i := bytes.IndexByte(v, ',')
	if i < 0 {
		return trimOWS(v), nil, true
	}
	return trimOWS(v[:i]), v[i+1:], false
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
