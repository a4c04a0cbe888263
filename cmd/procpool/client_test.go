package main

// A raw HTTP/1.1 client: the tests write requests byte for byte and read
// the responses with net/http's parser.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dial connects to the server with an I/O deadline.
func (s *server) dial(t *testing.T) *clientConn {
	t.Helper()
	cc, err := dialRaw(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// dialRaw is dial for goroutines other than the test's: it returns the
// error, and the caller closes the connection.
func dialRaw(addr string) (*clientConn, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	return &clientConn{Conn: c, br: bufio.NewReader(c)}, nil
}

// clientConn is a raw TCP connection with a reader for responses.
type clientConn struct {
	net.Conn
	br *bufio.Reader
}

// roundTrip writes a raw request and reads one response with its body.
func (c *clientConn) roundTrip(raw string) (*response, error) {
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, err
	}
	return c.readResponse()
}

func (c *clientConn) readResponse() (*response, error) {
	return readResponse(c.br)
}

// waitClosed reads until the server closes the connection. Anything but EOF
// or a reset within the deadline is an error.
func (c *clientConn) waitClosed(timeout time.Duration) error {
	c.SetReadDeadline(time.Now().Add(timeout))
	extra, err := io.ReadAll(c.br)
	if len(extra) > 0 {
		return fmt.Errorf("%d unexpected bytes before the close: %q", len(extra), extra)
	}
	if err != nil && !isReset(err) {
		return fmt.Errorf("connection not closed by the server: %v", err)
	}
	return nil
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// response is one HTTP response as a client read it.
type response struct {
	status int
	header http.Header
	body   string
	close  bool // the server said Connection: close
}

func readResponse(br *bufio.Reader) (*response, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: string(body), close: resp.Close}, nil
}

// get makes one request on a fresh connection that asks for the close.
func (s *server) get(t *testing.T, path string) *response {
	t.Helper()
	r, err := fetch(s.addr, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return r
}

// fetch is get for goroutines other than the test's, and for any address.
func fetch(addr, path string) (*response, error) {
	c, err := dialRaw(addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.roundTrip("GET " + path + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func refusedOrReset(err error) bool {
	return err != nil && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET))
}

// halfRequest is a request whose body is half sent: 5 of 10 bytes.
const halfRequest = "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhello"

// idleAndHalf opens two connections: one left idle after a keep-alive
// request, and one that has sent halfRequest.
func (s *server) idleAndHalf(t *testing.T) (idle, half *clientConn) {
	t.Helper()
	idle = s.dial(t)
	if r, err := idle.roundTrip("GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil || r.status != 200 || r.close {
		t.Fatalf("keep-alive request: %+v, %v", r, err)
	}
	half = s.dial(t)
	if _, err := io.WriteString(half, halfRequest); err != nil {
		t.Fatal(err)
	}
	return idle, half
}

// rcvbufDialer dials with a receive buffer of rcvbuf bytes, so that what the
// client does not read piles up on the server's side.
func rcvbufDialer(rcvbuf int) *net.Dialer {
	return &net.Dialer{Timeout: ioTimeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf) })
		return serr
	}}
}
