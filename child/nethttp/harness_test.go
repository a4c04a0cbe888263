package nethttp_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/child/internal/childtest"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// liveChild is a child.Run on a goroutine, the test being its master: the
// test accepts loopback connections and passes them over the channel.
type liveChild struct {
	ch   *ipc.Channel
	cfd  int
	ln   *childtest.Listener
	done chan error
}

func startChild(t *testing.T, cfg child.Config, h child.Handler) *liveChild {
	t.Helper()
	m, c, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	lc := &liveChild{ch: ipc.NewChannel(m), cfd: c, done: make(chan error, 1)}
	cfg.Channel, cfg.Listener = c, -1
	go func() { lc.done <- child.Run(cfg, h) }()
	t.Cleanup(func() {
		lc.ch.Close()
		select {
		case <-lc.done:
		case <-time.After(10 * time.Second):
			t.Error("child.Run did not return")
		}
		unix.Close(lc.cfd)
		if lc.ln != nil {
			lc.ln.Close()
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		msg, _, err := lc.ch.Recv(nil)
		if err == nil && msg.Cmd == ipc.CmdReady {
			break
		}
		if err != nil && err != ipc.ErrAgain {
			t.Fatalf("channel: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("child not ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	lc.ln = childtest.Listen(t)
	return lc
}

// dial connects and hands the server side to the child.
func (lc *liveChild) dial(t *testing.T) net.Conn {
	t.Helper()
	nc, fd := lc.ln.Dial(t, &net.Dialer{})
	childtest.Pass(t, lc.ch, fd)
	return nc
}

func (lc *liveChild) send(t *testing.T, cmd ipc.Cmd) {
	t.Helper()
	if err := lc.ch.Send(ipc.Msg{Cmd: cmd}, nil); err != nil {
		t.Fatal(err)
	}
}

// readRaw reads one response to a request with method from br and returns
// its bytes as sent, or the error that ended it.
func readRaw(br *bufio.Reader, method string) ([]byte, error) {
	var rec bytes.Buffer
	tr := &recorder{r: br, w: &rec}
	r := bufio.NewReaderSize(tr, 4096) // tr gives a byte per read: rec holds what was consumed, no more
	resp, err := http.ReadResponse(r, &http.Request{Method: method})
	if err != nil {
		return rec.Bytes(), err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return rec.Bytes(), err
}

type recorder struct {
	r *bufio.Reader
	w *bytes.Buffer
}

func (t *recorder) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b, err := t.r.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = b
	t.w.WriteByte(b)
	return 1, nil
}

// readInterim reads 1xx responses (status line to blank line) before a
// final one: ReadResponse swallows them.
func readRawAll(br *bufio.Reader, method string) ([]byte, error) {
	var out []byte
	for {
		line, err := br.Peek(12)
		if err != nil || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[9] != '1' {
			b, err := readRaw(br, method)
			return append(out, b...), err
		}
		for {
			l, err := br.ReadSlice('\n')
			out = append(out, l...)
			if err != nil {
				return out, err
			}
			if string(l) == "\r\n" {
				break
			}
		}
	}
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)

// normDate replaces every Date header's value: the one thing that may
// differ between two servers that agree.
func normDate(b []byte) string {
	return dateLine.ReplaceAllString(string(b), "Date: X\r")
}

// netHTTPRaw sends in to h under net/http's server and returns the raw
// responses (one per method in methods), and whether the connection was
// closed after them.
func netHTTPRaw(t *testing.T, h http.Handler, in string, methods []string) ([]byte, bool) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = discardLog
	srv.Start()
	defer srv.Close()
	nc, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	return exchangeRaw(t, nc, in, methods)
}

// procpoolRaw does the same through the adapter in a live child.
func procpoolRaw(t *testing.T, lc *liveChild, in string, methods []string) ([]byte, bool) {
	t.Helper()
	return exchangeRaw(t, lc.dial(t), in, methods)
}

func exchangeRaw(t *testing.T, nc net.Conn, in string, methods []string) ([]byte, bool) {
	t.Helper()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, in); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(nc, 1<<20)
	var out []byte
	for _, m := range methods {
		b, err := readRawAll(br, m)
		out = append(out, b...)
		if err != nil {
			return append(out, "<"+err.Error()+">"...), true
		}
	}
	// Closed? A kept connection times out on the read instead.
	nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	rest, err := io.ReadAll(br)
	out = append(out, rest...)
	ne, ok := err.(net.Error)
	return out, !(ok && ne.Timeout())
}
