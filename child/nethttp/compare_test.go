package nethttp_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/child/nethttp"
)

var discardLog = log.New(io.Discard, "", 0)

func get(target string, extra ...string) string {
	return "GET " + target + " HTTP/1.1\r\nHost: example.com\r\n" + strings.Join(extra, "") + "\r\n"
}

func post(target, body string, extra ...string) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n%s\r\n%s", target, len(body), strings.Join(extra, ""), body)
}

// echoRequest writes what the handler was given, so that the request side
// is compared too (RemoteAddr aside: the two servers have different peers).
func echoRequest(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "method=%s uri=%s path=%q rawpath=%q query=%q proto=%s %d.%d host=%s close=%v cl=%d te=%v\n",
		r.Method, r.RequestURI, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Proto, r.ProtoMajor, r.ProtoMinor,
		r.Host, r.Close, r.ContentLength, r.TransferEncoding)
	fmt.Fprintf(w, "url=%#v\n", *r.URL)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s=%q\n", k, r.Header[k])
	}
	b, err := io.ReadAll(r.Body)
	fmt.Fprintf(w, "body=%q err=%v trailer=%v\n", b, err, r.Trailer)
}

func bigBody(n int) string {
	var b strings.Builder
	for b.Len() < n {
		fmt.Fprintf(&b, "line %d of a large body\n", b.Len())
	}
	return b.String()[:n]
}

// writes is a handler that writes body and nothing else.
func writes(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}
}

type compareCase struct {
	name    string
	h       http.HandlerFunc
	in      string   // the client's bytes; default one GET /
	methods []string // one per expected response; default one GET
}

func compareCases() []compareCase {
	large := bigBody(3000)
	huge := bigBody(1 << 20)
	cases := []compareCase{
		{name: "hello", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("Hello World"))
		}},
		{name: "sniffed html", h: writes("<!DOCTYPE html><html><body>hi</body></html>")},
		{name: "sniffed binary", h: func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte{0, 1, 2, 3, 0xff})
		}},
		{name: "content-encoding not sniffed", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			w.Write([]byte("not really gzip"))
		}},
		{name: "nothing written", h: func(w http.ResponseWriter, r *http.Request) {}},
		{name: "201 with body", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "/thing/1")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "made")
		}},
		{name: "204 refuses a body", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusNoContent)
			if _, err := io.WriteString(w, "hello"); err != http.ErrBodyNotAllowed {
				panic(err)
			}
		}},
		{name: "304 drops content headers", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Etag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		}},
		{name: "unknown status", h: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(799)
			io.WriteString(w, "odd")
		}},
		{name: "http.Error", h: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no such thing", http.StatusNotFound)
		}},
		{name: "redirect", h: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere?a=1", http.StatusFound)
		}, in: get("/here")},
		{name: "headers: repeated, raw keys, newlines, invalid names", h: func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Add("X-Multi", "one")
			h.Add("X-Multi", "two")
			h["x-raw-key"] = []string{"kept as set"}
			h.Set("X-Newline", "a\r\nInjected: yes")
			h["Bad Name"] = []string{"dropped"}
			h.Set("X-Spaces", "  padded  ")
			h.Set("Set-Cookie", "a=1")
			h.Add("Set-Cookie", "b=2")
			io.WriteString(w, "ok")
		}},
		{name: "explicit content-length", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}, in: get("/") + get("/")},
		{name: "content-length exceeded", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "3")
			if _, err := io.WriteString(w, "hello"); err != http.ErrContentLength {
				panic(err)
			}
			io.WriteString(w, "hey")
		}},
		{name: "content-length short closes", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "10")
			w.Write([]byte("hello"))
		}, methods: []string{"HEAD"}}, // read as HEAD: the body never comes whole
		{name: "invalid content-length dropped", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "ten")
			io.WriteString(w, "hello")
		}},
		{name: "2 KiB is the content-length limit", h: writes(large[:2048])},
		{name: "over 2 KiB is chunked", h: writes(large), in: get("/") + get("/")},
		{name: "many small writes chunked", h: func(w http.ResponseWriter, r *http.Request) {
			for i := 0; i < 500; i++ {
				fmt.Fprintf(w, "%d,", i)
			}
		}},
		{name: "1 MiB chunked", h: writes(huge)},
		{name: "1 MiB with content-length", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(len(huge)))
			w.Header().Set("Content-Type", "text/plain")
			for s := huge; len(s) > 0; s = s[min(len(s), 10000):] {
				io.WriteString(w, s[:min(len(s), 10000)])
			}
		}, in: get("/") + get("/")},
		{name: "flush streams chunks", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
			}
		}, in: get("/") + get("/")},
		{name: "flush before writing", h: func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush()
			io.WriteString(w, "after")
		}},
		{name: "response controller flush", h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "one")
			if err := http.NewResponseController(w).Flush(); err != nil {
				panic(err)
			}
			io.WriteString(w, "two")
		}},
		{name: "identity transfer-encoding ends with the connection", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Transfer-Encoding", "identity")
			io.WriteString(w, large)
		}},
		{name: "declared trailers", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Sum, X-Count")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
			w.Header().Set("X-Count", "1")
		}, in: get("/") + get("/")},
		{name: "trailer prefix", h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "body")
			w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
		}},
		{name: "header changed after WriteHeader is ignored", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Before", "1")
			w.WriteHeader(http.StatusAccepted)
			w.Header().Set("X-After", "2")
			io.WriteString(w, "x")
		}},
		{name: "superfluous WriteHeader", h: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusTeapot)
			w.WriteHeader(http.StatusOK)
		}},
		{name: "1xx early hints", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "final")
		}},
		{name: "HEAD gets length, not body", h: writes("a body for GET"), in: "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n" + get("/"), methods: []string{"HEAD", "GET"}},
		{name: "HEAD with nothing written", h: func(w http.ResponseWriter, r *http.Request) {},
			in: "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n", methods: []string{"HEAD"}},
		{name: "HEAD of a large body", h: writes(large), in: "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n", methods: []string{"HEAD"}},
		{name: "client Connection: close", h: writes("bye"), in: get("/", "Connection: close\r\n")},
		{name: "handler Connection: close", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		}},
		{name: "HTTP/1.0", h: writes("old"), in: "GET / HTTP/1.0\r\n\r\n"},
		{name: "HTTP/1.0 keep-alive", h: writes("old"), in: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", methods: []string{"GET", "GET"}},
		{name: "HTTP/1.0 keep-alive, large body closes", h: writes(large), in: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"},
		{name: "request: query, escapes, repeated headers", h: echoRequest,
			in: get("/a%20b/c?x=1&y=%41", "X-Rep: 1\r\nx-rep: 2\r\naccept-ENCODING: gzip\r\nPragma: no-cache\r\n")},
		{name: "request: absolute form", h: echoRequest, in: "GET http://other.example/p?q HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{name: "request: empty query", h: echoRequest, in: get("/p?")},
		{name: "request: path with sub-delims", h: echoRequest, in: get("/a!b'c(d)*e")},
		{name: "request: POST body", h: echoRequest, in: post("/form", "a=1&b=2", "Content-Type: application/x-www-form-urlencoded\r\n")},
		{name: "request: chunked body", h: echoRequest,
			in: "POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"},
		{name: "request: HTTP/1.0 close flag", h: echoRequest, in: "GET /old HTTP/1.0\r\nHost: h\r\n\r\n"},
		{name: "request: form parsing", h: func(w http.ResponseWriter, r *http.Request) {
			r.ParseForm()
			fmt.Fprintf(w, "%v %v", r.Form, r.PostForm)
		}, in: post("/f?q=1", "a=2&a=3", "Content-Type: application/x-www-form-urlencoded\r\n")},
		{name: "unread body keeps the connection", h: writes("ignored it"), in: post("/", "some body") + get("/"), methods: []string{"GET", "GET"}},
		{name: "pipelined", h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.URL.Path)
		}, in: get("/1") + get("/2") + get("/3"), methods: []string{"GET", "GET", "GET"}},
		{name: "expectation failed", h: writes("never"), in: get("/", "Expect: something\r\n")},
		{name: "OPTIONS *", h: writes("never"), in: "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{name: "ServeContent: ranges and ReadFrom", h: func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "x.txt", time.Unix(1700000000, 0), strings.NewReader(large))
		}, in: get("/") + get("/", "Range: bytes=10-19\r\n") + get("/", "If-Modified-Since: Wed, 15 Nov 2023 00:00:00 GMT\r\n"),
			methods: []string{"GET", "GET", "GET"}},
		{name: "io.Copy of a reader without WriteTo", h: func(w http.ResponseWriter, r *http.Request) {
			io.Copy(w, io.LimitReader(strings.NewReader(huge), 100000))
		}},
		{name: "ServeMux", h: mux().ServeHTTP,
			in:      get("/") + get("/hello/ann") + get("/dir") + "POST /only-get HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n" + get("/missing") + get("/a/../b"),
			methods: []string{"GET", "GET", "GET", "POST", "GET", "GET"}},
		{name: "TimeoutHandler", h: http.TimeoutHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		}), 20*time.Millisecond, "too slow").ServeHTTP},
	}
	for i := range cases {
		if cases[i].in == "" {
			cases[i].in = get("/")
		}
		if cases[i].methods == nil {
			cases[i].methods = []string{"GET"}
		}
	}
	return cases
}

func mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "Hello World")
	})
	m.HandleFunc("GET /hello/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s (%s)", r.PathValue("name"), r.Pattern)
	})
	m.HandleFunc("/dir/", func(w http.ResponseWriter, r *http.Request) {})
	m.HandleFunc("GET /only-get", func(w http.ResponseWriter, r *http.Request) {})
	return m
}

// The same handlers under net/http's server and through the adapter in a
// live child answer with the same bytes, Date aside, and leave the
// connection open or closed alike.
func TestSameBytesAsNetHTTP(t *testing.T) {
	for _, c := range compareCases() {
		t.Run(c.name, func(t *testing.T) {
			want, wantClosed := netHTTPRaw(t, c.h, c.in, c.methods)
			lc := startChild(t, child.Config{}, nethttp.Handler(c.h))
			got, gotClosed := procpoolRaw(t, lc, c.in, c.methods)
			if normDate(got) != normDate(want) {
				t.Errorf("procpool answered\n%s\nnet/http answered\n%s", clip(got), clip(want))
			}
			if gotClosed != wantClosed {
				t.Errorf("connection closed: procpool %v, net/http %v", gotClosed, wantClosed)
			}
		})
	}
}

// Through an Exchanger (no sockets: the child's parser, the adapter and
// the child's response writer) the bytes are the same too.
func TestSameBytesThroughExchanger(t *testing.T) {
	for _, c := range compareCases() {
		t.Run(c.name, func(t *testing.T) {
			if strings.Contains(c.name, "TimeoutHandler") {
				t.Skip("needs a live connection's context")
			}
			want, wantClosed := netHTTPRaw(t, c.h, c.in, c.methods)
			e := child.NewExchanger(nethttp.Handler(c.h))
			var got []byte
			in := []byte(c.in)
			closed := false
			for len(in) > 0 && !closed {
				var n int
				got, n, closed = e.Exchange(got, in)
				if n == 0 {
					break
				}
				in = in[n:]
			}
			// net/http's read of a body that ends with the connection adds
			// no marker; the exchanger's output is complete as it is.
			w := strings.TrimSuffix(normDate(want), "<EOF>")
			if normDate(got) != w && !strings.HasPrefix(w, normDate(got)) {
				t.Errorf("exchanger answered\n%s\nnet/http answered\n%s", clip(got), clip(want))
			}
			if closed != wantClosed {
				t.Errorf("closed: exchanger %v, net/http %v", closed, wantClosed)
			}
		})
	}
}

func clip(b []byte) string {
	const max = 3000
	if len(b) > max {
		return string(b[:max/2]) + fmt.Sprintf("\n… %d bytes …\n", len(b)-max) + string(b[len(b)-max/2:])
	}
	return string(b)
}
