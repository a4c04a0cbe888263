package child

import (
	"bytes"
	"math"
	"sync/atomic"
	"testing"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// pairConn is one session serving one connection over a socketpair, driven
// by the test as the loop drives it: the test writes what the client sends,
// and the child reads it the moment it is written, so every write is a read
// of its own (or several, when the connection's buffer has less room).
type pairConn struct {
	s      *session
	c      *conn
	peer   int // the client's end
	lim    Limits
	to     Timeouts
	stop   atomic.Bool
	out    []byte // everything the child sent
	closed bool   // the child closed the connection
}

func newPairConn(tb testing.TB, h Handler, lim Limits) *pairConn {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	p := &pairConn{lim: lim, to: DefaultTimeouts, peer: fds[1]}
	p.s = newSession(h, new(ipc.Cell), &p.lim, &p.to, &p.stop)
	p.c = &conn{fd: fds[0], state: stReading}
	tb.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
		p.c.releaseBuffers()
	})
	return p
}

// send writes seg as the client and lets the child serve until it waits
// for more.
func (p *pairConn) send(tb testing.TB, seg []byte) {
	tb.Helper()
	for len(seg) > 0 && !p.closed {
		n, err := unix.Write(p.peer, seg)
		if err != nil && err != unix.EAGAIN {
			tb.Fatalf("client write: %v", err)
		}
		seg = seg[max(n, 0):]
		p.serve(tb)
	}
}

// serve calls the session for as long as the connection has something to
// do: bytes to read or output to finish. What the child sends is collected
// in out.
func (p *pairConn) serve(tb testing.TB) {
	tb.Helper()
	for !p.closed {
		a := p.s.serve(p.c)
		p.collect(tb)
		switch a {
		case aClose:
			p.closed = true
			return
		case aWrite:
			continue
		}
		if p.c.state == stWriting {
			continue
		}
		if queued, err := unix.IoctlGetInt(p.c.fd, unix.TIOCINQ); err != nil || queued == 0 {
			return
		}
	}
}

// collect reads what the child has sent so far.
func (p *pairConn) collect(tb testing.TB) {
	var buf [64 << 10]byte
	for {
		n, err := unix.Read(p.peer, buf[:])
		if n <= 0 || err != nil {
			return
		}
		p.out = append(p.out, buf[:n]...)
	}
}

// A Content-Length is a promise, not bytes: the connection's buffer holds
// what came and grows as the body arrives, never by more than twice that.
func TestDeclaredBodyBufferFollowsArrival(t *testing.T) {
	p := newPairConn(t, newTestRoutes(), DefaultLimits)
	body := bigBody()[:1<<20]
	head := "POST /echo HTTP/1.1\r\n" + hostLine + "Content-Length: " + itoa(len(body)) + "\r\n\r\n"
	p.send(t, []byte(head))
	if got := cap(p.c.in); got > bufSize {
		t.Fatalf("after the headers of a 1 MiB body the connection holds a %d-byte buffer, want at most %d", got, bufSize)
	}
	for i := 0; i < len(body); i += 16 << 10 {
		p.send(t, body[i:i+16<<10])
		if p.c.in != nil && cap(p.c.in) > 2*len(p.c.in)+bufSize {
			t.Fatalf("%d bytes of the body in: buffer of %d holding %d", i+16<<10, cap(p.c.in), len(p.c.in))
		}
	}
	all := responsesIn(t, p.out)
	if len(all) != 1 || all[0].status != 200 || !bytes.Equal(all[0].body, body) {
		t.Fatalf("%d responses, want the 1 MiB echo", len(all))
	}
}

// No limit a Config can carry makes a child panic or misjudge a request:
// limits are clamped to MaxLimits.
func TestHugeLimitsAreClamped(t *testing.T) {
	huge := Limits{MaxRequestLine: math.MaxInt, MaxHeaderBytes: math.MaxInt, MaxHeaders: math.MaxInt, MaxBody: math.MaxInt64}
	cfg := Config{Limits: huge}
	cfg.setDefaults()
	if cfg.Limits != MaxLimits {
		t.Errorf("limits %+v clamped to %+v, want %+v", huge, cfg.Limits, MaxLimits)
	}
	cfg = Config{Limits: Limits{MaxRequestLine: -1, MaxHeaderBytes: 100, MaxHeaders: -5, MaxBody: -1}}
	cfg.setDefaults()
	if want := (Limits{MaxHeaderBytes: 100}); cfg.Limits != want {
		t.Errorf("negative limits clamped to %+v, want %+v", cfg.Limits, want)
	}

	tc := startChild(t, Config{Limits: huge}, newTestRoutes())
	c := tc.dial(t)
	if r := c.roundTrip(t, "/a"); r.status != 200 {
		t.Fatalf("GET under the largest limits: %d", r.status)
	}
	c.send(t, "POST /echo HTTP/1.1\r\n"+hostLine+"Content-Length: 999999999999999\r\n\r\n")
	if r := c.read(t); r.status != 413 {
		t.Fatalf("Content-Length 999999999999999 under the largest limits: %d, want 413", r.status)
	}
	waiting := tc.dial(t)
	waiting.send(t, "POST /echo HTTP/1.1\r\n"+hostLine+"Content-Length: "+itoa(int(MaxLimits.MaxBody))+"\r\n\r\nabc")
	if r := tc.dial(t).roundTrip(t, "/b"); r.status != 200 {
		t.Fatalf("GET beside a request announcing the largest body: %d", r.status)
	}
}

// oneByteChunks is a chunked POST to /echo of body in 1-byte chunks.
func oneByteChunks(body []byte) []byte {
	b := []byte("POST /echo HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\n\r\n")
	for _, c := range body {
		b = append(b, '1', '\r', '\n', c, '\r', '\n')
	}
	return append(b, "0\r\n\r\n"...)
}

// The body limit counts the decoded body, the framing has its own bound: a
// 400 KB body in 1-byte chunks (2.4 MB on the wire) is under the default
// 1 MiB limit and is served.
func TestChunkedOneByteChunksUnderMaxBody(t *testing.T) {
	p := newPairConn(t, newTestRoutes(), DefaultLimits)
	body := bigBody()[:400_000]
	p.send(t, oneByteChunks(body))
	all := responsesIn(t, p.out)
	if len(all) != 1 || all[0].status != 200 || !bytes.Equal(all[0].body, body) {
		t.Fatalf("%d responses, status %d: want the 400 KB echo", len(all), all[0].status)
	}
}

// A chunked body that arrives a little at a time is decoded where the last
// read stopped: the decoder's work is linear in the input, not in the input
// times the number of reads. (1 MiB of 1-byte chunks in 1 KiB reads.)
func TestChunkedDecodeWorkIsLinear(t *testing.T) {
	p := newPairConn(t, newTestRoutes(), DefaultLimits)
	body := bigBody()[:(1<<20)/6]
	req := oneByteChunks(body)
	for i := 0; i < len(req); i += 1 << 10 {
		p.send(t, req[i:min(i+1<<10, len(req))])
	}
	all := responsesIn(t, p.out)
	if len(all) != 1 || all[0].status != 200 || !bytes.Equal(all[0].body, body) {
		t.Fatalf("%d responses: want the echo of %d bytes", len(all), len(body))
	}
	if work := p.c.body.work; work > 3*int64(len(req)) {
		t.Errorf("the decoder worked through %d bytes for a %d-byte request sent in 1 KiB reads, want at most 3 per byte",
			work, len(req))
	}
	// The same at the parser, against the request parsed whole.
	if problem := checkFed(req, splitEvery(req, 1<<10), DefaultLimits); problem != "" {
		t.Error(problem)
	}
}

// BenchmarkChunkedOneByteChunks1KiBReads is the cost to a child of 1 MiB of
// 1-byte chunks arriving in 1 KiB reads: the session's reads, decoding and
// answer, plus the test's 1024 writes and its read of the echo.
func BenchmarkChunkedOneByteChunks1KiBReads(b *testing.B) {
	p := newPairConn(b, newTestRoutes(), DefaultLimits)
	body := bigBody()[:(1<<20)/6]
	req := oneByteChunks(body)
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		p.out = p.out[:0]
		for i := 0; i < len(req); i += 1 << 10 {
			p.send(b, req[i:min(i+1<<10, len(req))])
		}
		if len(p.out) < len(body) {
			b.Fatalf("%d bytes of answer", len(p.out))
		}
	}
}
