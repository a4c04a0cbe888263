package child

import "strings"

// The parser tests share one set of requests: the valid and invalid cases
// below are checked whole (parse_test.go, parse_reject_test.go), cut at every
// byte (parse_split_test.go) and used as the fuzzer's seed corpus.

// testLimits are small, so that every limit can be reached with short
// requests; every case below is parsed under them.
var testLimits = Limits{
	MaxRequestLine: 100,
	MaxHeaderBytes: 200,
	MaxHeaders:     6,
	MaxBody:        64,
}

// parseCase is raw input with what the parser must make of it: requests
// complete requests, then status (0: the input ends after them; otherwise
// the status the next request is rejected with).
type parseCase struct {
	name     string
	raw      string
	requests int
	status   int
}

// hostLine is the Host field that every HTTP/1.1 request needs.
const hostLine = "Host: example.com\r\n"

func get(target string) string {
	return requestLine("GET " + target + " HTTP/1.1")
}

func post(target, body string) string {
	return "POST " + target + " HTTP/1.1\r\n" + hostLine +
		"Content-Length: " + itoa(len(body)) + "\r\n\r\n" + body
}

// chunkedPost frames the chunks given, then the trailer lines (each without
// its CRLF).
func chunkedPost(target string, chunks []string, trailers ...string) string {
	var b strings.Builder
	b.WriteString("POST " + target + " HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\n\r\n")
	for _, c := range chunks {
		b.WriteString(hex(len(c)) + "\r\n" + c + "\r\n")
	}
	b.WriteString("0\r\n")
	for _, t := range trailers {
		b.WriteString(t + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// chunkedWithExtensions is a chunked POST of n 1-byte chunks, each with a
// chunk extension that makes its size line ext bytes long, CRLF included.
func chunkedWithExtensions(n, ext int) string {
	var b strings.Builder
	b.WriteString("POST / HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\n\r\n")
	for range n {
		b.WriteString("1;x=" + strings.Repeat("e", ext-len("1;x=\r\n")) + "\r\nc\r\n")
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

// requestLine is a request with the request line given (without CRLF) and
// a Host field.
func requestLine(line string) string {
	return line + "\r\n" + hostLine + "\r\n"
}

// chunkedRaw is a GET to / that declares a chunked body, followed by
// framing as given: chunk-size lines, data and trailers.
func chunkedRaw(framing string) string {
	return withHeaders("Host: a", "Transfer-Encoding: chunked") + framing
}

// withHeaders is a GET to / carrying extra header lines (each without CRLF).
func withHeaders(lines ...string) string {
	return "GET / HTTP/1.1\r\n" + strings.Join(append(lines, ""), "\r\n") + "\r\n"
}

// requestLineOf returns a GET whose request line (without CRLF) is n bytes.
func requestLineOf(n int) string {
	const fixed = len("GET ") + len(" HTTP/1.1")
	return requestLine("GET /" + strings.Repeat("a", n-fixed-1) + " HTTP/1.1")
}

// headerBlockOf returns a GET whose header lines, CRLFs included and the
// final empty line excluded, are n bytes.
func headerBlockOf(n int) string {
	fill := n - len(hostLine) - len("X-Fill: \r\n")
	return "GET / HTTP/1.1\r\n" + hostLine + "X-Fill: " + strings.Repeat("f", fill) + "\r\n\r\n"
}

// headerCountOf returns a GET with n header fields, Host included.
func headerCountOf(n int) string {
	lines := []string{"Host: a"}
	for i := 1; i < n; i++ {
		lines = append(lines, "X-"+itoa(i)+": v")
	}
	return withHeaders(lines...)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func hex(n int) string {
	const digits = "0123456789abcdef"
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 16 {
		b = append([]byte{digits[n%16]}, b...)
	}
	return string(b)
}

var validCases = []parseCase{
	{name: "GET", raw: get("/"), requests: 1},
	{name: "GET with query", raw: get("/a/b?x=1&y=%20"), requests: 1},
	{name: "HEAD", raw: requestLine("HEAD /h HTTP/1.1"), requests: 1},
	{name: "POST with Content-Length", raw: post("/p", "hello"), requests: 1},
	{name: "POST with repeated equal Content-Length", raw: "POST / HTTP/1.1\r\n" + hostLine +
		"Content-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc", requests: 1},
	{name: "chunked with extensions and trailers", raw: "POST /c HTTP/1.1\r\n" + hostLine +
		"Transfer-Encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n6 ; a=\"b\"\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n", requests: 1},
	{name: "chunked, empty body", raw: chunkedPost("/", nil), requests: 1},
	{name: "HTTP/1.0", raw: "GET / HTTP/1.0\r\n\r\n", requests: 1},
	{name: "HTTP/1.0 keep-alive", raw: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", requests: 1},
	{name: "leading CRLFs", raw: "\r\n\r\n" + get("/"), requests: 1},
	{name: "Expect 100-continue", raw: "PUT /e HTTP/1.1\r\n" + hostLine +
		"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok", requests: 1},
	{name: "request line at the limit", raw: requestLineOf(testLimits.MaxRequestLine), requests: 1},
	{name: "header block at the limit", raw: headerBlockOf(testLimits.MaxHeaderBytes), requests: 1},
	{name: "header count at the limit", raw: headerCountOf(testLimits.MaxHeaders), requests: 1},
	{name: "body at the limit", raw: post("/", strings.Repeat("b", int(testLimits.MaxBody))), requests: 1},
	{name: "chunked body at the limit", raw: chunkedPost("/", []string{strings.Repeat("c", 40),
		strings.Repeat("d", int(testLimits.MaxBody)-40)}), requests: 1},
	{name: "chunked in 1-byte chunks", raw: chunkedPost("/", strings.Split(strings.Repeat("z", int(testLimits.MaxBody)), "")), requests: 1},
	{name: "pipelined 1-byte chunks and GET", raw: chunkedPost("/", []string{"a", "b"}) + get("/2"), requests: 2},
	{name: "chunk-size line at its limit", raw: chunkedRaw("1;" + strings.Repeat("e", maxChunkLine-3) + "\r\na\r\n0\r\n\r\n"), requests: 1},
	{name: "chunked framing within its allowance", raw: chunkedWithExtensions(2, frameSlack/2-16), requests: 1},
	{name: "pipelined GETs", raw: get("/1") + get("/2"), requests: 2},
	{name: "pipelined POST and GET", raw: post("/1", "body") + get("/2"), requests: 2},
	{name: "pipelined chunked and GET", raw: chunkedPost("/1", []string{"ab", "cde"}, "T: v") + get("/2"), requests: 2},
	{name: "pipelined GET and bad request", raw: get("/1") + "GET / HTTP/1.1\r\nHost : a\r\n\r\n", requests: 1, status: 400},
	{name: "pipelined POST and smuggling attempt", raw: post("/1", "x") +
		"POST / HTTP/1.1\r\n" + hostLine + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", requests: 1, status: 400},
}

var rejectCases = []parseCase{
	// Framing.
	{name: "Content-Length with Transfer-Encoding", status: 400, raw: "POST / HTTP/1.1\r\n" + hostLine +
		"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding with Content-Length", status: 400, raw: "POST / HTTP/1.1\r\n" + hostLine +
		"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"},
	{name: "differing Content-Length fields", status: 400, raw: withHeaders("Host: a", "Content-Length: 3", "Content-Length: 4") + "abcd"},
	{name: "differing Content-Length list", status: 400, raw: withHeaders("Host: a", "Content-Length: 3, 4") + "abcd"},
	{name: "signed Content-Length", status: 400, raw: withHeaders("Host: a", "Content-Length: +3") + "abc"},
	{name: "negative Content-Length", status: 400, raw: withHeaders("Host: a", "Content-Length: -1")},
	{name: "hex Content-Length", status: 400, raw: withHeaders("Host: a", "Content-Length: 0x3") + "abc"},
	{name: "Content-Length with trailing junk", status: 400, raw: withHeaders("Host: a", "Content-Length: 3a") + "abc"},
	{name: "empty Content-Length", status: 400, raw: withHeaders("Host: a", "Content-Length: ")},
	{name: "empty Content-Length after a valid one", status: 400, raw: withHeaders("Host: a", "Content-Length: 3", "Content-Length:") + "abc"},
	{name: "Content-Length empty list item", status: 400, raw: withHeaders("Host: a", "Content-Length: 3,,3") + "abc"},
	{name: "Content-Length trailing comma", status: 400, raw: withHeaders("Host: a", "Content-Length: 3,") + "abc"},
	{name: "Content-Length trailing comma and space", status: 400, raw: withHeaders("Host: a", "Content-Length: 3, ") + "abc"},
	{name: "Content-Length leading comma", status: 400, raw: withHeaders("Host: a", "Content-Length: ,3") + "abc"},
	{name: "Content-Length comma only", status: 400, raw: withHeaders("Host: a", "Content-Length: ,")},
	{name: "Content-Length list with an empty item", status: 400, raw: withHeaders("Host: a", "Content-Length: 3, ,3") + "abc"},
	{name: "Content-Length too long", status: 400, raw: withHeaders("Host: a", "Content-Length: 0000000000000000003") + "abc"},
	{name: "unknown Transfer-Encoding", status: 501, raw: withHeaders("Host: a", "Transfer-Encoding: gzip")},
	{name: "unknown coding before chunked", status: 501, raw: withHeaders("Host: a", "Transfer-Encoding: gzip, chunked") + "0\r\n\r\n"},
	{name: "chunked not last", status: 400, raw: withHeaders("Host: a", "Transfer-Encoding: chunked, gzip")},
	{name: "chunked twice in one field", status: 400, raw: withHeaders("Host: a", "Transfer-Encoding: chunked, chunked") + "0\r\n\r\n"},
	{name: "chunked twice in two fields", status: 400, raw: withHeaders("Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + "0\r\n\r\n"},
	{name: "empty Transfer-Encoding", status: 400, raw: withHeaders("Host: a", "Transfer-Encoding: ")},
	{name: "Transfer-Encoding in HTTP/1.0", status: 400, raw: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},

	// Chunked bodies.
	{name: "non-hex chunk size", status: 400, raw: chunkedRaw("zz\r\nab\r\n0\r\n\r\n")},
	{name: "empty chunk size", status: 400, raw: chunkedRaw("\r\nab\r\n0\r\n\r\n")},
	{name: "chunk size overflow", status: 400, raw: chunkedRaw("10000000000000000\r\nab\r\n0\r\n\r\n")},
	{name: "chunk size with junk", status: 400, raw: chunkedRaw("2 x\r\nab\r\n0\r\n\r\n")},
	{name: "chunk size line ends in bare LF", status: 400, raw: chunkedRaw("2\nab\r\n0\r\n\r\n")},
	{name: "chunk data too long", status: 400, raw: chunkedRaw("2\r\nabc\r\n0\r\n\r\n")},
	{name: "chunk-size line over its limit", status: 400, raw: chunkedRaw("1;" + strings.Repeat("e", maxChunkLine-2) + "\r\na\r\n0\r\n\r\n")},
	{name: "chunked framing over its allowance", status: 413, raw: chunkedWithExtensions(3, frameSlack/2-16)},
	{name: "NUL in chunk extension", status: 400, raw: chunkedRaw("2;a\x00\r\nab\r\n0\r\n\r\n")},
	{name: "obs-fold in trailer", status: 400, raw: chunkedRaw("0\r\nT: a\r\n b\r\n\r\n")},
	{name: "bare CR in trailer", status: 400, raw: chunkedRaw("0\r\nT: a\rb\r\n\r\n")},

	// Forbidden bytes and line endings.
	{name: "bare CR in request line", status: 400, raw: requestLine("GET /a\rb HTTP/1.1")},
	{name: "NUL in request line", status: 400, raw: requestLine("GET /a\x00b HTTP/1.1")},
	{name: "NUL in method", status: 400, raw: requestLine("G\x00T / HTTP/1.1")},
	{name: "bare CR in header value", status: 400, raw: withHeaders("Host: a", "X: a\rb")},
	{name: "NUL in header value", status: 400, raw: withHeaders("Host: a", "X: a\x00b")},
	{name: "DEL in header value", status: 400, raw: withHeaders("Host: a", "X: a\x7fb")},
	{name: "bare CR ends header block", status: 400, raw: "GET / HTTP/1.1\r\nHost: a\r\n\rx\r\n\r\n"},
	{name: "bare LF after request line", status: 400, raw: "GET / HTTP/1.1\n" + hostLine + "\r\n"},
	{name: "bare LF after header", status: 400, raw: "GET / HTTP/1.1\r\nHost: a\n\r\n"},
	{name: "bare LF ends header block", status: 400, raw: "GET / HTTP/1.1\r\nHost: a\r\n\n"},
	{name: "lone LF request line", status: 400, raw: "\n" + get("/")},
	{name: "whitespace before colon", status: 400, raw: withHeaders("Host : a")},
	{name: "tab before colon", status: 400, raw: withHeaders("Host: a", "X\t: b")},
	{name: "obs-fold", status: 400, raw: withHeaders("Host: a", "X: a", " b")},
	{name: "obs-fold with tab", status: 400, raw: withHeaders("Host: a", "X: a", "\tb: c")},
	{name: "header without colon", status: 400, raw: withHeaders("Host: a", "X")},
	{name: "header with empty name", status: 400, raw: withHeaders("Host: a", ": b")},

	// Host.
	{name: "HTTP/1.1 without Host", status: 400, raw: "GET / HTTP/1.1\r\nX: a\r\n\r\n"},
	{name: "HTTP/1.1 with two Hosts", status: 400, raw: withHeaders("Host: a", "Host: b")},
	{name: "HTTP/1.0 with two Hosts", status: 400, raw: "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"},

	// Request line.
	{name: "invalid method char", status: 400, raw: requestLine("G(T / HTTP/1.1")},
	{name: "empty method", status: 400, raw: requestLine(" / HTTP/1.1")},
	{name: "space in target", status: 400, raw: requestLine("GET /a b HTTP/1.1")},
	{name: "double space", status: 400, raw: requestLine("GET  / HTTP/1.1")},
	{name: "quote in target", status: 400, raw: requestLine("GET /\"x\" HTTP/1.1")},
	{name: "high byte in target", status: 400, raw: requestLine("GET /\xc3\xa9 HTTP/1.1")},
	{name: "backslash in target", status: 400, raw: requestLine("GET /a\\b HTTP/1.1")},
	{name: "no version", status: 400, raw: requestLine("GET /")},
	{name: "lower-case version", status: 400, raw: requestLine("GET / http/1.1")},
	{name: "two-digit minor", status: 400, raw: requestLine("GET / HTTP/1.10")},
	{name: "HTTP/2.0", status: 505, raw: requestLine("GET / HTTP/2.0")},
	{name: "HTTP/0.9", status: 505, raw: requestLine("GET / HTTP/0.9")},
	{name: "HTTP/1.2", status: 505, raw: requestLine("GET / HTTP/1.2")},

	// Limits, one over.
	{name: "request line over the limit", status: 414, raw: requestLineOf(testLimits.MaxRequestLine + 1)},
	{name: "long request line ending in bare LF", status: 414, raw: "GET /" +
		strings.Repeat("a", testLimits.MaxRequestLine) + " HTTP/1.1\n" + hostLine + "\r\n"},
	{name: "header block over the limit", status: 431, raw: headerBlockOf(testLimits.MaxHeaderBytes + 1)},
	{name: "header count over the limit", status: 431, raw: headerCountOf(testLimits.MaxHeaders + 1)},
	{name: "body over the limit", status: 413, raw: post("/", strings.Repeat("b", int(testLimits.MaxBody)+1))},
	{name: "chunked body over the limit", status: 413, raw: chunkedPost("/", []string{strings.Repeat("c", 40),
		strings.Repeat("d", int(testLimits.MaxBody)-39)})},
	{name: "trailers over the header limit", status: 431, raw: chunkedPost("/", nil, "T: "+strings.Repeat("t", testLimits.MaxHeaderBytes))},
	{name: "long trailer with NUL", status: 431, raw: chunkedPost("/", nil, "T: \x00"+strings.Repeat("t", testLimits.MaxHeaderBytes))},
	{name: "leading CRLFs over the limit", status: 400, raw: strings.Repeat("\r\n", testLimits.MaxRequestLine) + get("/")},
}
