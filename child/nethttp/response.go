package nethttp

// The response writer follows net/http's server.go (response, chunkWriter,
// writeHeader, finishRequest; BSD-style licence, The Go Authors) closely
// enough that a handler's output is the same bytes: the same 2 KiB buffer
// decides between Content-Length and chunked, the header is written in the
// same order, sniffing, HEAD, 1xx, trailers and the keep-alive rules are
// the same. Where the bytes go differs: into the child's response, which
// the child sends when the handler returns or, on Flush, at once.

import (
	"bufio"
	"io"
	"log"
	"net/http"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/procpool/procpool/child"
)

const (
	// bufferBeforeChunkingSize is net/http's: a handler that has written
	// no more than this when it returns gets a Content-Length.
	bufferBeforeChunkingSize = 2048
	// flushAt is how much raw output may wait in the child before it is
	// sent while the handler still runs (net/http's conn buffer is 4 KiB).
	flushAt  = 64 << 10
	sniffLen = 512
)

// response is the http.ResponseWriter (and http.Flusher) a handler gets.
// It belongs to a worker state and is reused.
type response struct {
	st  *state
	cw  *child.Response
	req *http.Request

	isHEAD, is11 bool

	handlerHeader http.Header
	calledHeader  bool
	wroteHeader   bool // a non-1xx header was (logically) written
	status        int
	written       int64
	contentLength int64
	handlerDone   bool

	wants10KeepAlive bool
	wantsClose       bool
	closeAfterReply  bool
	trailers         []string

	w     *bufio.Writer // bufferBeforeChunkingSize, into chunk
	chunk chunkWriter
}

type chunkWriter struct {
	res         *response
	header      sortedHeader // the header as WriteHeader saw it
	owned       bool         // header is set (the handler touched the header)
	wroteHeader bool         // the header is in the child's response
	chunking    bool
	werr        error
}

func (w *response) reset(st *state, cw *child.Response, req *http.Request) {
	clear(w.handlerHeader)
	*w = response{
		st: st, cw: cw, req: req,
		isHEAD:           req.Method == http.MethodHead,
		is11:             req.ProtoMinor == 1,
		handlerHeader:    w.handlerHeader,
		contentLength:    -1,
		wants10KeepAlive: req.ProtoMinor == 0 && valuesHaveToken(req.Header["Connection"], "keep-alive"),
		wantsClose:       req.Close || valuesHaveToken(req.Header["Connection"], "close"),
		trailers:         w.trailers[:0],
		w:                w.w,
		chunk:            chunkWriter{res: w, header: w.chunk.header[:0]},
	}
	w.w.Reset(&w.chunk)
}

func (w *response) Header() http.Header {
	if !w.chunk.owned && w.wroteHeader && !w.chunk.wroteHeader {
		// Accessing the header between logically writing it and
		// physically writing it means we need a snapshot of the logically
		// written state.
		w.chunk.snapshot()
	}
	w.calledHeader = true
	return w.handlerHeader
}

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		logCaller("superfluous response.WriteHeader call")
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	// Informational headers go out at once; after 101 Switching Protocols
	// nothing more may be sent, so it takes the final path.
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		b := appendStatusLine(w.st.head[:0], w.is11, code)
		b = w.st.appendHeader(b, w.handlerHeader, excludedNoBody)
		b = append(b, "\r\n"...)
		w.st.head = b
		w.cw.WriteRaw(b)
		if err := w.cw.Flush(); err != nil {
			w.chunk.werr = err
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	if w.calledHeader && !w.chunk.owned {
		w.chunk.snapshot()
	}
	if cl := headerGet(w.handlerHeader, "Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			logf("http: invalid Content-Length of %q", cl)
			w.handlerHeader.Del("Content-Length")
		}
	}
}

func (w *response) Write(data []byte) (int, error) { return w.write(len(data), data, "") }

func (w *response) WriteString(data string) (int, error) { return w.write(len(data), nil, data) }

func (w *response) write(lenData int, dataB []byte, dataS string) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if lenData == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(lenData) // ignoring errors, as net/http does
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	if dataB != nil {
		return w.w.Write(dataB)
	}
	return w.w.WriteString(dataS)
}

// Flush implements http.Flusher: what the handler wrote goes to the client
// now (the header first, chunked when no Content-Length was set).
func (w *response) Flush() { w.FlushError() }

// FlushError is what http.ResponseController.Flush calls.
func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.w.Flush()
	if e2 := w.chunk.flush(); err == nil {
		err = e2
	}
	return err
}

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// ReadFrom is net/http's, less sendfile: the first 512 bytes go through the
// buffer, for sniffing, then the header is sent and the rest copied.
func (w *response) ReadFrom(src io.Reader) (n int64, err error) {
	buf := w.st.copyBuf()
	if !w.chunk.wroteHeader {
		n0, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(src, sniffLen), buf)
		n += n0
		if err != nil || n0 < sniffLen {
			return n, err
		}
	}
	w.w.Flush()
	w.chunk.flush()
	if !w.chunk.chunking && bodyAllowedForStatus(w.status) && !w.isHEAD {
		// net/http hands this part to the socket's ReadFrom, bypassing
		// the Content-Length check: so does this.
		n0, err := io.CopyBuffer(writerOnly{&w.chunk}, src, buf)
		n += n0
		w.written += n0
		return n, err
	}
	n0, err := io.CopyBuffer(writerOnly{w}, src, buf)
	n += n0
	return n, err
}

func (cw *chunkWriter) Write(p []byte) (int, error) {
	if !cw.wroteHeader {
		cw.writeHeader(p)
	}
	if cw.res.isHEAD {
		return len(p), nil // eat writes
	}
	if cw.werr != nil {
		return 0, cw.werr
	}
	out := cw.res.cw
	if cw.chunking {
		b := strconv.AppendUint(cw.res.st.head[:0], uint64(len(p)), 16)
		out.WriteRaw(append(b, "\r\n"...))
	}
	out.WriteRaw(p)
	if cw.chunking {
		out.WriteRaw(crlf)
	}
	if out.Pending() >= flushAt {
		if err := out.Flush(); err != nil {
			cw.werr = err
			return 0, err
		}
	}
	return len(p), nil
}

func (cw *chunkWriter) flush() error {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	if cw.werr != nil {
		return cw.werr
	}
	if err := cw.res.cw.Flush(); err != nil {
		cw.werr = err
	}
	return cw.werr
}

func (cw *chunkWriter) close() {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	if cw.chunking {
		b := append(cw.res.st.head[:0], "0\r\n"...)
		if t := cw.res.finalTrailers(); t != nil {
			b = cw.res.st.appendHeader(b, t, nil)
		}
		b = append(b, "\r\n"...)
		cw.res.st.head = b
		cw.res.cw.WriteRaw(b)
	}
}

var crlf = []byte("\r\n")

// writeHeader is net/http's chunkWriter.writeHeader: it settles the
// framing and writes the header into the child's response. p is the first
// part of the body, for sniffing and, when the handler is done, its length.
func (cw *chunkWriter) writeHeader(p []byte) {
	if cw.wroteHeader {
		return
	}
	cw.wroteHeader = true
	w := cw.res
	st := w.st
	keepAlivesEnabled := !w.cw.Draining() // as if the server had SetKeepAlivesEnabled(false)

	// The snapshot WriteHeader took; empty when the handler never touched
	// the header, and then so is the handler's map (net/http looks there).
	header := &cw.header
	delHeader := header.del
	var set extraHeader

	// Don't write out the fake "Trailer:foo" keys. See http.TrailerPrefix.
	trailers := false
	for i := 0; i < len(*header); i++ {
		if k := (*header)[i].key; strings.HasPrefix(k, http.TrailerPrefix) {
			header.del(k)
			i--
			trailers = true
		}
	}
	if vs, ok := header.values("Trailer"); ok {
		for _, v := range vs {
			trailers = true
			foreachHeaderElement(v, w.declareTrailer)
		}
	}

	te := header.get("Transfer-Encoding")
	hasTE := te != ""

	// The handler is done and never sent a Content-Length, and this is the
	// first and last write: set it, even to zero (not for 1xx/204/304,
	// nor for a HEAD whose handler wrote nothing).
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !header.has("Content-Length") && (!w.isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		set.contentLength = strconv.AppendInt(st.clen[:0], int64(len(p)), 10)
	}

	// HTTP/1.0 with keep-alive and a Content-Length: keep the connection.
	if w.wants10KeepAlive && keepAlivesEnabled {
		sentLength := header.get("Content-Length") != ""
		if sentLength && header.get("Connection") == "keep-alive" {
			w.closeAfterReply = false
		}
	}

	hasCL := w.contentLength != -1

	if w.wants10KeepAlive && (w.isHEAD || hasCL || !bodyAllowedForStatus(w.status)) {
		if !header.has("Connection") {
			set.connection = "keep-alive"
		}
	} else if !w.is11 || w.wantsClose {
		w.closeAfterReply = true
	}

	if header.get("Connection") == "close" || !keepAlivesEnabled {
		w.closeAfterReply = true
	}

	// net/http reads what is left of an unread request body here, or closes
	// the connection when that is over 256 KiB; the child has read the body
	// already, so the connection stays usable either way.

	code := w.status
	if bodyAllowedForStatus(code) {
		haveType := header.has("Content-Type")
		hasCE := len(header.get("Content-Encoding")) > 0
		if !hasCE && !haveType && !hasTE && len(p) > 0 {
			set.contentType = http.DetectContentType(p)
		}
	} else {
		for _, k := range suppressedHeaders(code) {
			delHeader(k)
		}
	}

	if !header.has("Date") {
		set.date = st.date()
	}

	if hasCL && hasTE && te != "identity" {
		logf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, w.contentLength)
		delHeader("Content-Length")
		hasCL = false
	}

	switch {
	case w.isHEAD || !bodyAllowedForStatus(code) || code == http.StatusNoContent:
		delHeader("Transfer-Encoding")
	case hasCL:
		delHeader("Transfer-Encoding")
	case w.is11:
		if hasTE && te == "identity" {
			// The body ends with the connection (server-sent events'
			// recommended setup).
			cw.chunking = false
			w.closeAfterReply = true
			delHeader("Transfer-Encoding")
		} else {
			cw.chunking = true
			set.transferEncoding = "chunked"
			if hasTE && te == "chunked" {
				delHeader("Transfer-Encoding") // sent below instead
			}
		}
	default:
		// HTTP/1.0 and no length: the body ends with the connection.
		w.closeAfterReply = true
		delHeader("Transfer-Encoding")
	}

	if cw.chunking {
		delHeader("Content-Length")
	}

	delConnectionHeader := w.closeAfterReply &&
		(!keepAlivesEnabled || !hasToken(header.get("Connection"), "close")) &&
		!isProtocolSwitchResponse(w.status, *header)
	if delConnectionHeader {
		delHeader("Connection")
		if w.is11 {
			set.connection = "close"
		}
	}

	b := appendStatusLine(st.head[:0], w.is11, code)
	b = header.append(b)
	b = set.append(b)
	b = append(b, "\r\n"...)
	st.head = b
	w.cw.SetStatus(code)
	w.cw.WriteRaw(b)
}

// extraHeader is the set of headers writeHeader may add, written after the
// handler's, in net/http's order.
type extraHeader struct {
	contentType      string
	connection       string
	transferEncoding string
	date             []byte
	contentLength    []byte
}

func (h *extraHeader) append(b []byte) []byte {
	if h.date != nil {
		b = append(b, "Date: "...)
		b = append(b, h.date...)
		b = append(b, "\r\n"...)
	}
	if h.contentLength != nil {
		b = append(b, "Content-Length: "...)
		b = append(b, h.contentLength...)
		b = append(b, "\r\n"...)
	}
	for i, v := range [...]string{h.contentType, h.connection, h.transferEncoding} {
		if v != "" {
			b = append(b, [...]string{"Content-Type", "Connection", "Transfer-Encoding"}[i]...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

// finishRequest is net/http's, once the handler has returned.
func (w *response) finishRequest() {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.w.Flush()
	w.chunk.close()
	if w.req.MultipartForm != nil {
		w.req.MultipartForm.RemoveAll()
	}
	if !w.shouldReuseConnection() {
		w.cw.Close()
	}
}

func (w *response) shouldReuseConnection() bool {
	if w.closeAfterReply {
		return false
	}
	if !w.isHEAD && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written {
		return false // did not write enough: the client would lose its place
	}
	return w.chunk.werr == nil
}

func (w *response) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

func (w *response) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !validTrailerHeader(k) {
		return
	}
	w.trailers = append(w.trailers, k)
}

// badTrailer lists the fields RFC 7230 §4.1.2 forbids in a trailer, as
// httpguts.ValidTrailerHeader does.
var badTrailer = map[string]bool{
	"Authorization": true, "Cache-Control": true, "Connection": true,
	"Content-Encoding": true, "Content-Length": true, "Content-Range": true,
	"Content-Type": true, "Expect": true, "Host": true, "Keep-Alive": true,
	"Max-Forwards": true, "Pragma": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Proxy-Connection": true, "Range": true,
	"Realm": true, "Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Www-Authenticate": true,
}

func validTrailerHeader(name string) bool {
	name = http.CanonicalHeaderKey(name)
	return !strings.HasPrefix(name, "If-") && !badTrailer[name]
}

// appendStatusLine is net/http's writeStatusLine.
func appendStatusLine(b []byte, is11 bool, code int) []byte {
	if is11 {
		b = append(b, "HTTP/1.1 "...)
	} else {
		b = append(b, "HTTP/1.0 "...)
	}
	if text := http.StatusText(code); text != "" {
		b = strconv.AppendInt(b, int64(code), 10)
		b = append(b, ' ')
		b = append(b, text...)
		return append(b, "\r\n"...)
	}
	c := strconv.Itoa(code)
	for len(c) < 3 {
		c = "0" + c
	}
	b = append(b, c...)
	b = append(b, " status code "...)
	b = strconv.AppendInt(b, int64(code), 10)
	return append(b, "\r\n"...)
}

type keyValues struct {
	key    string
	values []string
}

func byKey(a, b keyValues) int { return strings.Compare(a.key, b.key) }

// sortedHeader is a response header as WriteHeader saw it: its fields in
// the order they are written. Lookups scan it (a response has a few
// fields); keys are matched exactly, as net/http's map lookups are.
type sortedHeader []keyValues

// snapshot takes the handler's header as it is now (net/http clones it;
// the values are shared here: a handler replaces them, Header.Set and Add
// never write into them).
func (cw *chunkWriter) snapshot() {
	kvs := cw.header[:0]
	for k, vv := range cw.res.handlerHeader {
		kvs = append(kvs, keyValues{k, vv})
	}
	slices.SortFunc(kvs, byKey)
	cw.header, cw.owned = kvs, true
}

func (h sortedHeader) values(key string) ([]string, bool) {
	for i := range h {
		if h[i].key == key {
			return h[i].values, true
		}
	}
	return nil, false
}

func (h sortedHeader) get(key string) string {
	if v, _ := h.values(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h sortedHeader) has(key string) bool {
	_, ok := h.values(key)
	return ok
}

func (h *sortedHeader) del(key string) {
	for i := range *h {
		if (*h)[i].key == key {
			*h = slices.Delete(*h, i, i+1)
			return
		}
	}
}

// append writes h as http.Header.WriteSubset would.
func (h sortedHeader) append(b []byte) []byte {
	for _, kv := range h {
		b = appendField(b, kv)
	}
	return b
}

func appendField(b []byte, kv keyValues) []byte {
	if !validHeaderFieldName(kv.key) {
		return b // net/http drops what it cannot write
	}
	for _, v := range kv.values {
		if strings.ContainsAny(v, "\r\n") {
			v = newlineToSpace.Replace(v)
		}
		v = trimString(v)
		b = append(b, kv.key...)
		b = append(b, ": "...)
		b = append(b, v...)
		b = append(b, "\r\n"...)
	}
	return b
}

// appendHeader writes h in wire format as http.Header.WriteSubset does:
// keys sorted, invalid names dropped, CR and LF in values turned into
// spaces, values trimmed; keys in exclude are left out.
func (st *state) appendHeader(b []byte, h http.Header, exclude []string) []byte {
	kvs := st.kvs[:0]
	for k, vv := range h {
		if !slices.Contains(exclude, k) {
			kvs = append(kvs, keyValues{k, vv})
		}
	}
	slices.SortFunc(kvs, byKey)
	for _, kv := range kvs {
		b = appendField(b, kv)
	}
	clear(kvs)
	st.kvs = kvs[:0]
	return b
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

var excludedNoBody = []string{"Content-Length", "Transfer-Encoding"}

func suppressedHeaders(status int) []string {
	switch {
	case status == 304:
		return []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
	case !bodyAllowedForStatus(status):
		return excludedNoBody
	}
	return nil
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204, status == 304:
		return false
	}
	return true
}

func headerGet(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func headerHas(h http.Header, key string) bool {
	_, ok := h[key]
	return ok
}

func isProtocolSwitchResponse(code int, h sortedHeader) bool {
	if code != http.StatusSwitchingProtocols || h.get("Upgrade") == "" {
		return false
	}
	conn, _ := h.values("Connection")
	return valuesHaveToken(conn, "Upgrade")
}

// foreachHeaderElement calls fn for each non-empty element of the list v.
func foreachHeaderElement(v string, fn func(string)) {
	v = trimString(v)
	if v == "" {
		return
	}
	if !strings.Contains(v, ",") {
		fn(v)
		return
	}
	for f := range strings.SplitSeq(v, ",") {
		if f = trimString(f); f != "" {
			fn(f)
		}
	}
}

// hasToken reports whether token appears in v, ASCII case-insensitively,
// with list boundaries around it (net/http's).
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

// trimString is textproto.TrimString: ASCII white space off both ends.
func trimString(s string) string {
	for len(s) > 0 && isASCIISpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isASCIISpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isASCIISpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func validHeaderFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// logf writes to the standard logger, where net/http's Server writes when
// it has no ErrorLog.
func logf(format string, args ...any) { log.Printf(format, args...) }

// logCaller logs msg with the first caller outside this package, as
// net/http does for a superfluous WriteHeader.
func logCaller(msg string) {
	pc := make([]uintptr, 16)
	n := runtime.Callers(2, pc)
	frames := runtime.CallersFrames(pc[:n])
	var frame runtime.Frame
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "github.com/procpool/procpool/child/nethttp.") {
			frame = f
			break
		}
		if !more {
			break
		}
	}
	logf("http: %s from %s (%s:%d)", msg, frame.Function, path.Base(frame.File), frame.Line)
}

// date is the Date header for now, formatted once a second per state.
func (st *state) date() []byte {
	now := time.Now()
	if s := now.Unix(); s != st.dateSec || st.dateBuf == nil {
		st.dateSec = s
		st.dateBuf = now.UTC().AppendFormat(st.dateBuf[:0], http.TimeFormat)
	}
	return st.dateBuf
}
