package child

import (
	"bytes"
	"math"
)

// Limits bound what one request may occupy. A request over a limit is
// answered with the status named beside it and the connection is closed.
type Limits struct {
	MaxRequestLine int   // bytes of the request line (414)
	MaxHeaderBytes int   // bytes of the header block (431)
	MaxHeaders     int   // number of header fields (431)
	MaxBody        int64 // bytes of the decoded body (413)
}

// DefaultLimits are close to nginx's defaults.
var DefaultLimits = Limits{
	MaxRequestLine: 8 << 10,
	MaxHeaderBytes: 16 << 10,
	MaxHeaders:     100,
	MaxBody:        1 << 20,
}

// MaxLimits are the largest limits a child takes: a Config's limits are
// clamped to them, and cmd/procpool refuses larger flags. A request is
// held in one buffer, so the body limit stays far below what a slice can
// address, and the sums over all limits cannot overflow an int.
var MaxLimits = Limits{
	MaxRequestLine: 1 << 20,
	MaxHeaderBytes: 1 << 20,
	MaxHeaders:     1 << 16,
	MaxBody:        min(1<<40, math.MaxInt>>3),
}

// clamp brings every limit within [0, MaxLimits], so that no value can
// make the child's arithmetic overflow or an allocation fail.
func (l Limits) clamp() Limits {
	l.MaxRequestLine = min(max(l.MaxRequestLine, 0), MaxLimits.MaxRequestLine)
	l.MaxHeaderBytes = min(max(l.MaxHeaderBytes, 0), MaxLimits.MaxHeaderBytes)
	l.MaxHeaders = min(max(l.MaxHeaders, 0), MaxLimits.MaxHeaders)
	l.MaxBody = min(max(l.MaxBody, 0), MaxLimits.MaxBody)
	return l
}

// maxChunkLine bounds a chunk-size line with its extensions.
const maxChunkLine = 4 << 10

// parse reads one request from the start of buf into r, which it resets.
//
// It returns (n, 0) when buf[:n] holds a whole request; (0, 0) when buf holds
// a prefix of a request that may still turn out valid, and *need, when not
// zero, says how many bytes buf must hold before another call can succeed;
// (0, status) when the request is malformed and must be answered with status.
// buf is modified only to decode a complete chunked body in place.
func parse(buf []byte, r *Request, lim *Limits, need *int) (int, int) {
	r.reset()
	*need = 0

	// RFC 9112 §2.2: ignore empty lines before the request-line.
	p := 0
	for len(buf)-p >= 2 && buf[p] == '\r' && buf[p+1] == '\n' {
		p += 2
		if p > lim.MaxRequestLine {
			return 0, 400
		}
	}

	eol := bytes.IndexByte(buf[p:], '\n')
	if eol < 0 {
		if len(buf)-p > lim.MaxRequestLine+1 { // +1: the line may end in its CR
			return 0, 414
		}
		return 0, 0
	}
	// Length first, so that a prefix that already gave 414 never turns into
	// a different status once the LF arrives.
	if eol-1 > lim.MaxRequestLine {
		return 0, 414
	}
	if eol == 0 || buf[p+eol-1] != '\r' {
		return 0, 400 // bare LF
	}
	if st := parseRequestLine(buf[p:p+eol-1], r); st != 0 {
		return 0, st
	}

	var h headerFacts
	q := p + eol + 1
	hstart := q
	for {
		rest := buf[q:]
		if len(rest) == 0 || len(rest) == 1 && rest[0] == '\r' {
			if q-hstart > lim.MaxHeaderBytes {
				return 0, 431
			}
			return 0, 0
		}
		if rest[0] == '\r' {
			if rest[1] != '\n' {
				return 0, 400
			}
			q += 2
			break
		}
		e := bytes.IndexByte(rest, '\n')
		if e < 0 {
			if q+len(rest)-hstart > lim.MaxHeaderBytes {
				return 0, 431
			}
			return 0, 0
		}
		if q+e+1-hstart > lim.MaxHeaderBytes {
			return 0, 431
		}
		if e < 2 || rest[e-1] != '\r' {
			return 0, 400
		}
		if len(r.headers) == lim.MaxHeaders {
			return 0, 431
		}
		if st := h.field(rest[:e-1], r); st != 0 {
			return 0, st
		}
		q += e + 1
	}

	if st := h.framing(r); st != 0 {
		return 0, st
	}
	r.headerEnd = q
	if h.chunked {
		return parseChunked(buf, q, r, lim, need)
	}
	if h.length > lim.MaxBody {
		return 0, 413
	}
	end := q + int(h.length)
	if len(buf) < end {
		*need = end
		return 0, 0
	}
	if h.length > 0 {
		r.Body = buf[q:end]
	}
	return end, 0
}

func parseRequestLine(line []byte, r *Request) int {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 400
	}
	r.Method = line[:sp]
	for _, c := range r.Method {
		if !isToken[c] {
			return 400
		}
	}
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 400
	}
	r.Target = line[:sp]
	for _, c := range r.Target {
		if !isTarget[c] {
			return 400
		}
	}
	r.Path = r.Target
	if i := bytes.IndexByte(r.Target, '?'); i >= 0 {
		r.Path, r.Query = r.Target[:i], r.Target[i+1:]
	}
	v := line[sp+1:]
	if len(v) != 8 || string(v[:5]) != "HTTP/" || v[6] != '.' || !isDigit(v[5]) || !isDigit(v[7]) {
		return 400
	}
	if v[5] != '1' || v[7] > '1' {
		return 505
	}
	r.Minor = int(v[7] - '0')
	return 0
}

// headerFacts gathers what the header fields say about framing and the
// connection, to be judged once the block is complete.
type headerFacts struct {
	hosts      int
	length     int64
	hasLength  bool
	hasTE      bool
	chunked    bool // the last coding seen is chunked
	teBad      bool // chunked applied twice, or an empty coding
	teUnknown  bool // a coding other than chunked
	closeTok   bool
	keepAliveT bool
	expect     bool
}

func (h *headerFacts) field(line []byte, r *Request) int {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return 400 // also catches obs-fold: a continuation line has no name
	}
	name := line[:colon]
	for _, c := range name {
		if !isToken[c] {
			return 400 // whitespace before the colon lands here
		}
	}
	value := trimOWS(line[colon+1:])
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 400
		}
	}
	r.headers = append(r.headers, field{name, value})

	switch {
	case equalFold(name, "host"):
		h.hosts++
	case equalFold(name, "content-length"):
		return h.contentLength(value)
	case equalFold(name, "transfer-encoding"):
		h.transferEncoding(value)
	case equalFold(name, "connection"):
		h.closeTok = h.closeTok || hasToken(value, "close")
		h.keepAliveT = h.keepAliveT || hasToken(value, "keep-alive")
	case equalFold(name, "expect"):
		h.expect = equalFold(value, "100-continue")
	}
	return 0
}

// contentLength accepts a plain decimal, or a list of identical ones
// (RFC 9110 §8.6: "3, 3"); anything else is a framing error: a value that
// differs from an earlier one, and any empty element ("3,", ",3", "3,,3"),
// which the list syntax tolerates but no sender has a reason to produce.
func (h *headerFacts) contentLength(v []byte) int {
	for {
		item := v
		i := bytes.IndexByte(v, ',')
		if i >= 0 {
			item, v = v[:i], v[i+1:]
		}
		item = trimOWS(item)
		if len(item) == 0 || len(item) > 18 {
			return 400
		}
		var n int64
		for _, c := range item {
			if !isDigit(c) {
				return 400
			}
			n = n*10 + int64(c-'0')
		}
		if h.hasLength && n != h.length {
			return 400
		}
		h.hasLength, h.length = true, n
		if i < 0 {
			return 0
		}
	}
}

func (h *headerFacts) transferEncoding(v []byte) {
	h.hasTE = true
	for {
		item := v
		i := bytes.IndexByte(v, ',')
		if i >= 0 {
			item, v = v[:i], v[i+1:]
		}
		item = trimOWS(item)
		switch {
		case len(item) == 0:
			h.teBad = true
		case equalFold(item, "chunked"):
			if h.chunked {
				h.teBad = true
			}
			h.chunked = true
		default:
			if h.chunked {
				h.teBad = true // chunked must be the last coding
			}
			h.teUnknown = true
			h.chunked = false
		}
		if i < 0 {
			return
		}
	}
}

// framing judges the completed header block (RFC 9112 §6).
func (h *headerFacts) framing(r *Request) int {
	if r.Minor == 1 && h.hosts != 1 || h.hosts > 1 {
		return 400
	}
	if h.hasTE {
		switch {
		case h.hasLength, r.Minor == 0, h.teBad:
			return 400
		case h.teUnknown:
			return 501
		}
	}
	r.close = h.closeTok || r.Minor == 0 && !h.keepAliveT
	// Only now that the block is complete and valid may the child send 100
	// Continue; HTTP/1.0 clients never get one (RFC 9110 §10.1.1).
	r.expect = h.expect && r.Minor == 1
	return 0
}

// parseChunked checks that buf[q:] holds a whole chunked body with its
// trailer section, then decodes it in place.
func parseChunked(buf []byte, q int, r *Request, lim *Limits, need *int) (int, int) {
	pos, total := q, int64(0)
	for {
		e := bytes.IndexByte(buf[pos:], '\n')
		if e < 0 {
			if len(buf)-pos > maxChunkLine {
				return 0, 400
			}
			return 0, 0
		}
		if e == 0 || buf[pos+e-1] != '\r' || e > maxChunkLine {
			return 0, 400
		}
		size, ok := chunkSize(buf[pos : pos+e-1])
		if !ok {
			return 0, 400
		}
		pos += e + 1
		if size == 0 {
			break
		}
		total += size
		if total > lim.MaxBody {
			return 0, 413
		}
		if int64(len(buf)-pos) < size+2 {
			*need = pos + int(size) + 2
			return 0, 0
		}
		end := pos + int(size)
		if buf[end] != '\r' || buf[end+1] != '\n' {
			return 0, 400
		}
		pos = end + 2
	}
	// Trailer fields: checked like header lines, then ignored.
	tstart := pos
	for {
		rest := buf[pos:]
		if len(rest) < 2 {
			return 0, 0
		}
		if rest[0] == '\r' {
			if rest[1] != '\n' {
				return 0, 400
			}
			pos += 2
			break
		}
		e := bytes.IndexByte(rest, '\n')
		if e < 0 {
			if pos+len(rest)-tstart > lim.MaxHeaderBytes {
				return 0, 431
			}
			return 0, 0
		}
		if pos+e+1-tstart > lim.MaxHeaderBytes {
			return 0, 431 // before the line checks, as a prefix would see it
		}
		if e < 2 || rest[e-1] != '\r' || rest[0] == ' ' || rest[0] == '\t' ||
			bytes.IndexByte(rest[:e], ':') <= 0 {
			return 0, 400 // a trailer field is name: value like a header
		}
		for _, c := range rest[:e-1] {
			if c < ' ' && c != '\t' || c == 0x7f {
				return 0, 400
			}
		}
		pos += e + 1
	}

	// Second pass: move the chunk data together. It never overtakes the
	// read position, so copying forward within buf is safe.
	src, dst := q, q
	for {
		e := bytes.IndexByte(buf[src:], '\n')
		size, _ := chunkSize(buf[src : src+e-1])
		src += e + 1
		if size == 0 {
			break
		}
		dst += copy(buf[dst:], buf[src:src+int(size)])
		src += int(size) + 2
	}
	if total > 0 {
		r.Body = buf[q:dst]
	}
	return pos, 0
}

// chunkSize parses "HEX [; ext]" and reports whether it is well formed.
func chunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		d := unhex(line[i])
		if d < 0 {
			break
		}
		if i == 15 {
			return 0, false // would overflow int64
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, false
	}
	ext := trimOWS(line[i:])
	if len(ext) > 0 && ext[0] != ';' {
		return 0, false
	}
	for _, c := range ext {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	return n, true
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken marks tchar (RFC 9110 §5.6.2); isTarget marks the characters
// RFC 3986 allows in a request-target: unreserved, reserved and '%'.
var isToken, isTarget [256]bool

func init() {
	for c := 0; c < 256; c++ {
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		isToken[c] = alnum || bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), byte(c)) >= 0
		isTarget[c] = alnum || bytes.IndexByte([]byte("-._~:/?#[]@!$&'()*+,;=%"), byte(c)) >= 0
	}
}
