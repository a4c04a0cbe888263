package child

import (
	"strconv"
	"time"
)

// Response collects what a handler answers. The child serialises it after
// the handler returns, so the handler never touches the socket and a
// response is always framed with a correct Content-Length.
type Response struct {
	status      int
	contentType string
	header      []byte // extra "Name: value\r\n" lines
	body        []byte
	close       bool
	rawState    // raw and streamed responses (stream.go)
}

// SetStatus sets the status code; 200 when never called. A code outside
// 100-599 is a handler bug and is answered as 500.
func (w *Response) SetStatus(code int) {
	if code < 100 || code > 599 {
		code = 500
	}
	w.status = code
}

// SetContentType sets the Content-Type header. Like an AddHeader value, a v
// with CR, LF or NUL is dropped.
func (w *Response) SetContentType(v string) {
	if safeHeader(v) {
		w.contentType = v
	}
}

// AddHeader adds a header line. The line is dropped, silently, when the
// name is not a token (RFC 9110 §5.6.2: no space, colon, CR or LF) or the
// value holds CR, LF or NUL, so that a handler cannot split the response;
// and when the name is Content-Length or Transfer-Encoding (in any case):
// the child frames every response itself, and a second framing header
// would let a client and a proxy read different responses.
func (w *Response) AddHeader(name, value string) {
	if !validName(name) || !safeHeader(value) || framingName(name) {
		return
	}
	w.header = append(w.header, name...)
	w.header = append(w.header, ": "...)
	w.header = append(w.header, value...)
	w.header = append(w.header, "\r\n"...)
}

// Close asks for the connection to be closed after this response.
func (w *Response) Close() { w.close = true }

// Write appends p to the body.
func (w *Response) Write(p []byte) (int, error) {
	w.body = append(w.body, p...)
	return len(p), nil
}

// WriteString appends s to the body.
func (w *Response) WriteString(s string) (int, error) {
	w.body = append(w.body, s...)
	return len(s), nil
}

func (w *Response) reset() {
	w.status, w.contentType, w.close = 200, "", false
	w.header, w.body = w.header[:0], w.body[:0]
	if cap(w.body) > maxKeptBody {
		w.body = nil // one large answer must not pin its memory for good
	}
}

// maxKeptBody is the largest body buffer a session keeps between requests.
const maxKeptBody = 64 << 10

// validName reports whether s is a header field name: a non-empty token.
func validName(s string) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isToken[s[i]] {
			return false
		}
	}
	return true
}

// framingName reports whether name is one of the fields that frame a
// message, compared without regard to case.
func framingName(name string) bool {
	for _, f := range [...]string{"content-length", "transfer-encoding"} {
		if len(name) == len(f) {
			i := 0
			for i < len(f) && lower(name[i]) == f[i] {
				i++
			}
			if i == len(f) {
				return true
			}
		}
	}
	return false
}

func safeHeader(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' || s[i] == '\n' || s[i] == 0 {
			return false
		}
	}
	return true
}

// bodyless reports whether a response of status has no body: 1xx, 204
// and 304 (RFC 9110, 6.4.1).
func bodyless(status int) bool { return status == 204 || status == 304 || status < 200 }

// appendResponse serialises w as the answer to r onto dst.
func appendResponse(dst []byte, w *Response, r *Request, date []byte) []byte {
	if w.raw {
		return append(dst, w.body...) // framed by the handler (stream.go)
	}
	dst = appendStatusLine(dst, w.status)
	dst = append(dst, "Server: procpool\r\nDate: "...)
	dst = append(dst, date...)
	dst = append(dst, "\r\n"...)
	if w.contentType != "" {
		dst = append(dst, "Content-Type: "...)
		dst = append(dst, w.contentType...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, w.header...)
	noBody := bodyless(w.status)
	if !noBody {
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, int64(len(w.body)), 10)
		dst = append(dst, "\r\n"...)
	}
	switch {
	case r.close:
		dst = append(dst, "Connection: close\r\n"...)
	case r.Minor == 0:
		dst = append(dst, "Connection: keep-alive\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	if !noBody && !isHead(r.Method) {
		dst = append(dst, w.body...)
	}
	return dst
}

// appendError serialises the answer to a request that could not be parsed.
func appendError(dst []byte, status int, date []byte) []byte {
	dst = appendStatusLine(dst, status)
	dst = append(dst, "Server: procpool\r\nDate: "...)
	dst = append(dst, date...)
	dst = append(dst, "\r\nContent-Type: text/plain\r\nContent-Length: "...)
	text := statusText(status)
	dst = strconv.AppendInt(dst, int64(errorBodyLen(status)), 10)
	dst = append(dst, "\r\nConnection: close\r\n\r\n"...)
	dst = append(dst, text...)
	return append(dst, '\n')
}

// errorBodyLen is the size of the body appendError sends with status.
func errorBodyLen(status int) int { return len(statusText(status)) + 1 }

func isHead(m []byte) bool { return string(m) == "HEAD" }

func appendStatusLine(dst []byte, code int) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	dst = append(dst, statusText(code)...)
	return append(dst, "\r\n"...)
}

func statusText(code int) string {
	switch code {
	case 100:
		return "Continue"
	case 200:
		return "OK"
	case 201:
		return "Created"
	case 204:
		return "No Content"
	case 301:
		return "Moved Permanently"
	case 302:
		return "Found"
	case 304:
		return "Not Modified"
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 413:
		return "Content Too Large"
	case 414:
		return "URI Too Long"
	case 431:
		return "Request Header Fields Too Large"
	case 500:
		return "Internal Server Error"
	case 501:
		return "Not Implemented"
	case 503:
		return "Service Unavailable"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Status"
}

// clock keeps the Date header, formatted once a second.
type clock struct {
	sec  int64
	now  time.Time
	date []byte
}

// tick reads the time and reformats the Date header when the second changed.
func (c *clock) tick() {
	c.now = time.Now()
	if s := c.now.Unix(); s != c.sec {
		c.sec = s
		c.date = c.now.UTC().AppendFormat(c.date[:0], "Mon, 02 Jan 2006 15:04:05 GMT")
	}
}
