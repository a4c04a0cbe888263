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

// pending is more than the most bytes one request that is not complete yet
// can leave in a connection's buffer under these limits: empty lines and a
// request line, a header block, the body, and either a chunk-size line or
// a trailer section not complete yet (the chunked decoder keeps the data,
// not the framing it has read). A buffer that reaches it is a bug's, not a
// client's.
func (l *Limits) pending() int {
	return 2*l.MaxRequestLine + l.MaxHeaderBytes + int(l.MaxBody) + max(l.MaxHeaderBytes, maxChunkLine) + 16
}

// parse reads one request from the start of buf into r, which it resets.
//
// It returns (n, 0) when buf[:n] holds a whole request; (0, 0) when buf holds
// a prefix of a request that may still turn out valid, and *need, when not
// zero, says how many bytes buf must hold before another call can succeed;
// (0, status) when the request is malformed and must be answered with status.
// buf is modified only to decode a complete chunked body in place. parse
// keeps nothing from one call to the next; a connection, which sees its
// requests arrive a read at a time, uses parseRequest.
func parse(buf []byte, r *Request, lim *Limits, need *int) (int, int) {
	var b bodyState
	return parseRequest(buf, r, lim, need, &b, false)
}

// parseRequest is parse for a connection that keeps b from one call to the
// next. With resume, a chunked body that is not complete yet is decoded as
// far as it has arrived: its data moved down over the framing, in place, and
// the last b.cut bytes of buf no longer belong to the request (the caller
// drops them before it keeps the rest); the next call, with the kept bytes
// and what arrived since, goes on where this one stopped, so each byte of a
// body is looked at a bounded number of times however it is split into reads.
// Without resume, b is left as parse would find it and buf is not modified
// unless the request is complete.
func parseRequest(buf []byte, r *Request, lim *Limits, need *int, b *bodyState, resume bool) (int, int) {
	*need = 0
	if b.on {
		return b.resume(buf, r, lim, need)
	}
	r.reset()
	q, h, st := parseHead(buf, r, lim)
	if q == 0 || st != 0 {
		return 0, st
	}
	if h.chunked {
		b.start(q, resume)
		n, st := b.decode(buf, lim, need)
		if n == 0 && (st != 0 || !resume) {
			b.reset()
		}
		if n > 0 {
			r.Body = b.body(buf)
			b.reset()
		}
		return n, st
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

// parseHead parses the request line and the header block at the start of
// buf into r. It returns where the body starts, 0 while the block is not
// complete, or the status that rejects the request; with the block it
// returns what the fields said about framing.
func parseHead(buf []byte, r *Request, lim *Limits) (int, headerFacts, int) {
	var h headerFacts
	// RFC 9112 §2.2: ignore empty lines before the request-line.
	p := 0
	for len(buf)-p >= 2 && buf[p] == '\r' && buf[p+1] == '\n' {
		p += 2
		if p > lim.MaxRequestLine {
			return 0, h, 400
		}
	}

	eol := bytes.IndexByte(buf[p:], '\n')
	if eol < 0 {
		if len(buf)-p > lim.MaxRequestLine+1 { // +1: the line may end in its CR
			return 0, h, 414
		}
		return 0, h, 0
	}
	// Length first, so that a prefix that already gave 414 never turns into
	// a different status once the LF arrives.
	if eol-1 > lim.MaxRequestLine {
		return 0, h, 414
	}
	r.line = buf[p : p+eol]
	if eol == 0 || buf[p+eol-1] != '\r' {
		return 0, h, 400 // bare LF
	}
	r.line = r.line[:eol-1]
	if st := parseRequestLine(buf[p:p+eol-1], r); st != 0 {
		return 0, h, st
	}

	q := p + eol + 1
	hstart := q
	for {
		rest := buf[q:]
		n, end, st := fieldLine(rest, bytes.IndexByte(rest, '\n'), q-hstart, lim.MaxHeaderBytes)
		if n == 0 {
			return 0, h, st
		}
		q += n
		if end {
			break
		}
		if len(r.headers) == lim.MaxHeaders {
			return 0, h, 431
		}
		if st := h.field(rest[:n-2], r); st != 0 {
			return 0, h, st
		}
	}

	if st := h.framing(r); st != 0 {
		return 0, h, st
	}
	r.headerEnd = q
	return q, h, 0
}

func parseRequestLine(line []byte, r *Request) int {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 400
	}
	r.Method = line[:sp]
	if !all(r.Method, &isToken) {
		return 400
	}
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 400
	}
	r.Target = line[:sp]
	if !all(r.Target, &isTarget) {
		return 400
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
	hosts         int
	length        int64
	hasLength     bool
	hasTE         bool
	chunked       bool // the last coding seen is chunked
	teBad         bool // chunked applied twice, or an empty coding
	teUnknown     bool // a coding other than chunked
	connClose     bool // Connection: close
	connKeepAlive bool // Connection: keep-alive
	expect        bool
}

// fieldLine reads the line at the start of rest in a section of field
// lines, the header block or a trailer section, after used bytes of it;
// lf is the offset of the line's LF in rest, or -1 while it has not come.
// It returns the length of the line with its CRLF, and end when that is the
// empty line that ends the section (which max does not count); 0 when more
// is needed or the section is refused with st. What the line says is for
// splitField to check.
func fieldLine(rest []byte, lf, used, max int) (n int, end bool, st int) {
	switch {
	case len(rest) > 0 && rest[0] == '\r':
		if len(rest) == 1 {
			return 0, false, 0
		}
		if rest[1] != '\n' {
			return 0, false, 400
		}
		return 2, true, 0
	case lf < 0:
		if used+len(rest) > max {
			return 0, false, 431
		}
		return 0, false, 0
	case used+lf+1 > max:
		return 0, false, 431 // before the line's own checks, as a prefix would see it
	case lf < 2 || rest[lf-1] != '\r':
		return 0, false, 400
	}
	return lf + 1, false, 0
}

// splitField checks a field line, its CRLF cut off: a token, a colon, and
// a value without control characters, which it returns without the
// whitespace around it.
func splitField(line []byte) (name, value []byte, st int) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, nil, 400 // also catches obs-fold: a continuation line has no name
	}
	name = line[:colon]
	if !all(name, &isToken) {
		return nil, nil, 400 // whitespace before the colon lands here
	}
	value = trimOWS(line[colon+1:])
	if hasCTL(value) {
		return nil, nil, 400
	}
	return name, value, 0
}

func (h *headerFacts) field(line []byte, r *Request) int {
	name, value, st := splitField(line)
	if st != 0 {
		return st
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
		h.connClose = h.connClose || hasToken(value, "close")
		h.connKeepAlive = h.connKeepAlive || hasToken(value, "keep-alive")
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
		item, rest, last := nextItem(v)
		v = rest
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
		if last {
			return 0
		}
	}
}

func (h *headerFacts) transferEncoding(v []byte) {
	h.hasTE = true
	for {
		item, rest, last := nextItem(v)
		v = rest
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
		if last {
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
	r.close = h.connClose || r.Minor == 0 && !h.connKeepAlive
	// Only now that the block is complete and valid may the child send 100
	// Continue; HTTP/1.0 clients never get one (RFC 9110 §10.1.1).
	r.expect = h.expect && r.Minor == 1
	return 0
}

// Chunked framing is bounded apart from the decoded body: chunk-size lines
// (extensions included) and the CRLFs after chunk data may come to at most
// frameSlack bytes plus frameRatio per byte of data, counted as each size
// line is read, the chunk it announces included; more is 413, like a body
// over MaxBody. A body sent in 1-byte chunks (5 bytes of framing each)
// passes; one that is mostly extensions does not. The trailer section is
// bounded by MaxHeaderBytes, as the header block is.
const (
	frameSlack = 2 * maxChunkLine
	frameRatio = 8
)

// Phases of the chunked decoder.
const (
	atSize    uint8 = iota // at a chunk-size line
	atData                 // at the data of a chunk (left bytes) and its CRLF
	atTrailer              // in the trailer section
)

// bodyState is how far the decoder of a chunked body got. Offsets count from
// the start of the request. A connection keeps it while its request is not
// complete, so that decoding resumes where the last read left it.
type bodyState struct {
	on       bool  // a chunked body is being decoded
	resumed  bool  // decoding in place, to be resumed (parseRequest's resume)
	phase    uint8 // atSize, atData or atTrailer
	hdrEnd   int   // where the body starts
	pos      int   // where decoding goes on
	dst      int   // where the data decoded so far ends
	lineScan int   // bytes of the line at pos already searched for its LF
	left     int64 // atData: the chunk's size
	total    int64 // decoded body bytes, the chunk at pos included
	framing  int64 // bytes of chunk-size lines and of the CRLFs after data
	trailer  int   // bytes of complete trailer lines
	// cut, after a call that stopped for more input, is how many bytes at
	// the end of the buffer it was given are stale: the decoded data was
	// moved down over the framing, and the bytes not decoded yet with it.
	cut int
	// work counts the bytes the decoder searched, checked or moved over the
	// connection's life, so that tests can see it stays linear in the input
	// however the input is split into reads.
	work int64
}

func (b *bodyState) start(hdrEnd int, resume bool) {
	*b = bodyState{on: true, resumed: resume, hdrEnd: hdrEnd, pos: hdrEnd, dst: hdrEnd, work: b.work}
}

// reset forgets the request: the next call parses a new one.
func (b *bodyState) reset() { *b = bodyState{work: b.work} }

// body is the decoded body of a complete request, nil when empty. Unless
// the data was moved while decoding, it is moved now: it never overtakes
// the framing it is read from, so copying forward within buf is safe.
func (b *bodyState) body(buf []byte) []byte {
	if b.total == 0 {
		return nil
	}
	if !b.resumed {
		src, dst := b.hdrEnd, b.hdrEnd
		for {
			e := bytes.IndexByte(buf[src:], '\n')
			size, _ := chunkSize(buf[src : src+e-1])
			b.work += int64(e) + size
			src += e + 1
			if size == 0 {
				break
			}
			dst += copy(buf[dst:], buf[src:src+int(size)])
			src += int(size) + 2
		}
		b.dst = dst
	}
	return buf[b.hdrEnd:b.dst]
}

// resume goes on with the chunked body of a request whose header block was
// complete and valid on an earlier call. r gets the request again once it is
// complete or refused; while it is neither, only where its body starts.
func (b *bodyState) resume(buf []byte, r *Request, lim *Limits, need *int) (int, int) {
	n, st := b.decode(buf, lim, need)
	r.reset()
	if n == 0 && st == 0 {
		r.headerEnd = b.hdrEnd
		return 0, 0
	}
	// The header block is where it was, unchanged and valid.
	parseHead(buf, r, lim)
	if st != 0 {
		b.reset()
		return 0, st
	}
	r.Body = b.body(buf)
	b.reset()
	return n, 0
}

// decode goes through buf from b.pos, checking the framing and, when
// resumed, moving the data down to b.dst as each chunk is complete. It
// returns (n, 0) once buf[:n] holds the whole request, (0, 0) when it needs
// more, (0, status) when the body is refused.
func (b *bodyState) decode(buf []byte, lim *Limits, need *int) (int, int) {
	for {
		switch b.phase {
		case atSize:
			e, ok := b.nextLF(buf)
			if !ok {
				if len(buf)-b.pos > maxChunkLine {
					return 0, 400
				}
				return b.stop(buf, need)
			}
			if e == 0 || buf[b.pos+e-1] != '\r' || e > maxChunkLine {
				return 0, 400
			}
			size, ok := chunkSize(buf[b.pos : b.pos+e-1])
			b.work += int64(e)
			if !ok {
				return 0, 400
			}
			b.pos += e + 1
			b.framing += int64(e) + 1
			if size == 0 {
				b.phase = atTrailer
			} else {
				b.framing += 2 // the CRLF after the data
				b.total += size
				if b.total > lim.MaxBody {
					return 0, 413
				}
				b.left = size
				b.phase = atData
			}
			if b.framing > frameSlack+frameRatio*b.total {
				return 0, 413
			}
		case atData:
			if int64(len(buf)-b.pos) < b.left+2 {
				return b.stop(buf, need)
			}
			end := b.pos + int(b.left)
			if buf[end] != '\r' || buf[end+1] != '\n' {
				return 0, 400
			}
			if b.resumed && b.dst != b.pos {
				copy(buf[b.dst:], buf[b.pos:end])
				b.work += b.left
			}
			b.dst += int(b.left)
			b.pos = end + 2
			b.phase = atSize
		case atTrailer:
			// Trailer fields: checked like header lines, then ignored.
			rest := buf[b.pos:]
			lf, ok := b.nextLF(buf)
			if !ok {
				lf = -1
			}
			n, end, st := fieldLine(rest, lf, b.trailer, lim.MaxHeaderBytes)
			switch {
			case st != 0:
				return 0, st
			case n == 0:
				return b.stop(buf, need)
			case end:
				return b.pos + 2, 0
			}
			if _, _, st := splitField(rest[:n-2]); st != 0 {
				return 0, st
			}
			b.work += int64(n)
			b.trailer += n
			b.pos += n
		}
	}
}

// nextLF finds the LF that ends the line at b.pos, searching only the bytes
// not searched before; it returns the LF's offset from b.pos.
func (b *bodyState) nextLF(buf []byte) (int, bool) {
	from := b.pos + b.lineScan
	e := bytes.IndexByte(buf[from:], '\n')
	if e < 0 {
		b.work += int64(len(buf) - from)
		b.lineScan = len(buf) - b.pos
		return 0, false
	}
	b.work += int64(e + 1)
	b.lineScan = 0
	return from - b.pos + e, true
}

// stop ends a call that needs more input. When resumed, what was not
// decoded yet moves down to the end of the decoded data, so that a
// connection keeps the body and no framing it has read; need then counts
// in the buffer as it will be kept.
func (b *bodyState) stop(buf []byte, need *int) (int, int) {
	if b.resumed && b.dst != b.pos {
		n := copy(buf[b.dst:], buf[b.pos:])
		b.work += int64(n)
		b.cut = b.pos - b.dst
		b.pos = b.dst
	}
	if b.phase == atData {
		*need = b.pos + int(b.left) + 2
	}
	return 0, 0
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
	if len(ext) > 0 && ext[0] != ';' || hasCTL(ext) {
		return 0, false
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

// all reports whether every byte of b is in set.
func all(b []byte, set *[256]bool) bool {
	for _, c := range b {
		if !set[c] {
			return false
		}
	}
	return true
}

// hasCTL reports whether b holds a control character other than HTAB,
// which no field value, trailer or chunk extension may.
func hasCTL(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

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
