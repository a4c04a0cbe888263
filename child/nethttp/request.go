package nethttp

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/procpool/procpool/child"
)

// perRequest is what each request allocates, in one piece: the parts of an
// *http.Request that a handler or the standard library may hand to another
// goroutine that outlives the request (http.TimeoutHandler does), so they
// must not be reused.
type perRequest struct {
	url  url.URL
	body body
}

// field locates a header field in the request's text.
type field struct {
	k0, k1 int // canonical name in the scratch buffer
	v0, v1 int // value
}

// buildRequest fills st.req from cr. It returns false when the target
// cannot be a URL (net/http answers 400).
func (st *state) buildRequest(cr *child.Request, cw *child.Response) bool {
	pr := new(perRequest)
	req := &st.req
	*req = st.tmpl // every field zero, the context kept

	// One string holds the target, every header field (names canonical)
	// and the remote address: one allocation for all of them.
	b := append(st.scratch[:0], cr.Target...)
	target := len(b)
	fs := st.fields[:0]
	mapped := 0 // fields that go into the map: all but Host and Transfer-Encoding
	cr.Headers(func(name, value []byte) {
		if !isField(name, "host") && !isField(name, "transfer-encoding") {
			mapped++
		}
		f := field{k0: len(b)}
		b = appendCanonical(b, name)
		f.k1, f.v0 = len(b), len(b)
		b = append(b, value...)
		f.v1 = len(b)
		fs = append(fs, f)
	})
	addr := len(b)
	if ap := cr.RemoteAddr(); ap.IsValid() {
		b = ap.AppendTo(b)
	}
	text := string(b)
	st.scratch, st.fields = b, fs

	req.Method = method(cr.Method)
	req.RequestURI = text[:target]
	req.RemoteAddr = text[addr:]
	if cr.Minor == 0 {
		req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/1.0", 1, 0
	} else {
		req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/1.1", 1, 1
	}
	if !parseTarget(&pr.url, req.Method, req.RequestURI) {
		return false
	}
	req.URL = &pr.url

	h := make(http.Header, mapped)
	var vals []string
	if mapped > 0 {
		vals = make([]string, 0, mapped) // one backing array for the values
	}
	var host string
	var chunked bool
	for i := range fs {
		f := &fs[i]
		k, v := text[f.k0:f.k1], text[f.v0:f.v1]
		switch k {
		case "Host":
			if host == "" {
				host = v
			}
			continue // net/http takes it out of the map into Request.Host
		case "Transfer-Encoding":
			chunked = true // the child accepts chunked and nothing else
			continue
		}
		if old, ok := h[k]; ok {
			h[k] = append(old[:len(old):len(old)], v)
			continue
		}
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if chunked && req.ProtoMinor == 0 {
		chunked = false // net/http ignores Transfer-Encoding in HTTP/1.0
	}
	// net/http's fixPragmaCacheControl.
	if hp, ok := h["Pragma"]; ok && len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	req.Header = h
	req.Host = req.URL.Host
	if req.Host == "" {
		req.Host = host
	}
	req.Close = shouldClose(req.ProtoMinor, h["Connection"])

	switch {
	case chunked:
		delete(h, "Content-Length")
		req.ContentLength = -1
		req.TransferEncoding = chunkedTE
	case len(cr.Body) > 0:
		req.ContentLength = int64(len(cr.Body))
	}
	if len(cr.Body) > 0 || chunked {
		pr.body.b = cr.Body
		req.Body = &pr.body
		st.body = &pr.body
	} else {
		req.Body = http.NoBody
		st.body = nil
	}
	return true
}

var chunkedTE = []string{"chunked"}

// isField compares a header name with a lower-case one, ASCII
// case-insensitively.
func isField(name []byte, lower string) bool {
	if len(name) != len(lower) {
		return false
	}
	for i, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// appendCanonical appends name in the canonical form textproto gives it:
// first letter and every letter after a hyphen upper case, the rest lower.
// The child's parser has checked that name is a token.
func appendCanonical(b, name []byte) []byte {
	upper := true
	for _, c := range name {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
		upper = c == '-'
	}
	return b
}

// method returns the method as a constant string for the common ones.
func method(m []byte) string {
	switch string(m) {
	case "GET":
		return http.MethodGet
	case "HEAD":
		return http.MethodHead
	case "POST":
		return http.MethodPost
	case "PUT":
		return http.MethodPut
	case "DELETE":
		return http.MethodDelete
	case "PATCH":
		return http.MethodPatch
	case "OPTIONS":
		return http.MethodOptions
	}
	return string(m)
}

// parseTarget fills u from the request-target as url.ParseRequestURI would
// (with net/http's treatment of CONNECT), without its allocations for the
// common origin form: a path of characters that need no escaping, and a
// query.
func parseTarget(u *url.URL, method, target string) bool {
	path, query, hasQuery := strings.Cut(target, "?")
	if len(path) > 0 && path[0] == '/' && plainPath(path) && (!hasQuery || query != "") {
		u.Path, u.RawQuery = path, query
		return true
	}
	justAuthority := method == "CONNECT" && !strings.HasPrefix(target, "/")
	raw := target
	if justAuthority {
		raw = "http://" + target
	}
	p, err := url.ParseRequestURI(raw)
	if err != nil {
		return false
	}
	if justAuthority {
		p.Scheme = ""
	}
	*u = *p
	return true
}

// plainPath reports whether url.URL would keep path as it is: nothing to
// unescape and nothing it would escape, so RawPath stays empty.
func plainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-_.~$&+,/:;=@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// shouldClose is net/http's: HTTP/1.0 closes unless asked to keep alive;
// HTTP/1.1 when asked to close.
func shouldClose(minor int, conn []string) bool {
	hasClose := valuesHaveToken(conn, "close")
	if minor == 0 {
		return hasClose || !valuesHaveToken(conn, "keep-alive")
	}
	return hasClose
}

func valuesHaveToken(vs []string, token string) bool {
	for _, v := range vs {
		if hasToken(v, token) {
			return true
		}
	}
	return false
}

// body is a request body the child has already read whole. After the
// handler returns it reads as closed, as net/http's does.
type body struct {
	b      []byte
	closed bool
}

func (b *body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if len(b.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.b)
	b.b = b.b[n:]
	return n, nil
}

// WriteTo lets io.Copy take the body in one write.
func (b *body) WriteTo(w io.Writer) (int64, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := w.Write(b.b)
	b.b = b.b[n:]
	return int64(n), err
}

func (b *body) Close() error {
	b.closed, b.b = true, nil
	return nil
}

// reqCtx is the request's context, one per worker state, reused. It is
// cancelled when the client goes away, when the child stops (or drains with
// the response streaming), and when the handler returns. Watching the
// connection starts only when a handler asks for Done or Err, so handlers
// that never look pay nothing for it.
type reqCtx struct {
	mu   sync.Mutex
	w    *child.Response // nil once the request is over
	done <-chan struct{}
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func (c *reqCtx) begin(w *child.Response) {
	c.mu.Lock()
	c.w, c.done = w, nil
	c.mu.Unlock()
}

// end is called on the handler's goroutine when it has returned: from then
// on the context is done, and the child's response is out of reach.
func (c *reqCtx) end() {
	c.mu.Lock()
	c.w, c.done = nil, closedChan
	c.mu.Unlock()
}

func (c *reqCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *reqCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = c.w.Done()
	}
	return c.done
}

func (c *reqCtx) Err() error {
	select {
	case <-c.Done():
		return context.Canceled
	default:
		return nil
	}
}

func (c *reqCtx) Value(any) any { return nil }

func (c *reqCtx) String() string { return "nethttp request context" }
