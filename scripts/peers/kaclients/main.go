// Command kaclients holds N keep-alive clients open against a server, for
// scripts/reload-under-load: it counts how often a reload makes a client
// reconnect.
//
// Each client is one goroutine with one raw TCP connection. Every -interval it
// sends "GET / HTTP/1.1" and reads the whole response (the clients' first
// requests are spread over the first interval). Before each request it looks
// at the connection without blocking (recv with MSG_PEEK|MSG_DONTWAIT): if the
// server closed it (EOF) or reset it while it was idle, the client counts a
// reconnect and dials again. A request that was sent and got no complete
// response within -timeout counts as failed: the client closes the connection
// and dials again for its next request (a reconnect), without retrying the
// failed one. A response that says "Connection: close" counts as answered, and
// the next request goes on a new connection (a reconnect). A dial that fails
// counts the request it was for as failed (and as a connect error).
//
// Reconnects are every connection a client opens after its first, so
//
//	reconnects = idle-closed + idle-reset + after-close-header + after-failure
//
// It prints one line:
//
//	LABEL requests=N ok=N failed=N reconnects=N non2xx=N connect_errors=N idle_closed=N idle_reset=N close_header=N after_failed=N
//
// requests counts what was due (sent, or lost to a failed dial); ok counts
// complete 2xx responses; non2xx complete responses of another status. With
// -v every failure and reconnect is logged to stderr with its time since the
// start, the client and the connection's local port.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type counters struct {
	requests, ok, failed, non2xx, connectErrors     atomic.Int64
	idleClosed, idleReset, closeHeader, afterFailed atomic.Int64
}

var (
	addr     = flag.String("addr", "127.0.0.1:8080", "server address")
	clients  = flag.Int("n", 500, "number of clients (one connection and one goroutine each)")
	interval = flag.Duration("interval", 500*time.Millisecond, "time between one client's requests")
	duration = flag.Duration("duration", 10*time.Second, "how long requests are sent")
	timeout  = flag.Duration("timeout", 5*time.Second, "a response not complete after this long is a failure")
	path     = flag.String("path", "/", "request path")
	label    = flag.String("label", "", "printed at the start of the line")
	verbose  = flag.Bool("v", false, "log each failure and reconnect to stderr")
)

var (
	c     counters
	start time.Time
)

func logf(id int, conn net.Conn, format string, args ...any) {
	if !*verbose {
		return
	}
	port := 0
	if conn != nil {
		if a, ok := conn.LocalAddr().(*net.TCPAddr); ok {
			port = a.Port
		}
	}
	fmt.Fprintf(os.Stderr, "%8.3fs client %d port %d: %s\n", time.Since(start).Seconds(), id, port, fmt.Sprintf(format, args...))
}

func main() {
	flag.Parse()
	if *clients < 1 || *interval <= 0 {
		fmt.Fprintln(os.Stderr, "kaclients: -n must be at least 1 and -interval positive")
		os.Exit(2)
	}
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *addr + "\r\nUser-Agent: kaclients\r\n\r\n")
	start = time.Now()
	end := start.Add(*duration)
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			offset := time.Duration(int64(*interval) * int64(id) / int64(*clients))
			run(id, req, start.Add(offset), end)
		}(i)
	}
	wg.Wait()
	if *label != "" {
		fmt.Print(*label, " ")
	}
	fmt.Printf("requests=%d ok=%d failed=%d reconnects=%d non2xx=%d connect_errors=%d idle_closed=%d idle_reset=%d close_header=%d after_failed=%d\n",
		c.requests.Load(), c.ok.Load(), c.failed.Load(),
		c.idleClosed.Load()+c.idleReset.Load()+c.closeHeader.Load()+c.afterFailed.Load(),
		c.non2xx.Load(), c.connectErrors.Load(),
		c.idleClosed.Load(), c.idleReset.Load(), c.closeHeader.Load(), c.afterFailed.Load())
}

// why the client's connection went away; counted when the next one is opened.
type gone int

const (
	goneNone gone = iota
	goneIdleClosed
	goneIdleReset
	goneCloseHeader
	goneFailed
)

func run(id int, req []byte, next, end time.Time) {
	var (
		conn      net.Conn
		br        *bufio.Reader
		connected bool // this client has had a connection before
		why       = goneNone
	)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	drop := func(w gone) {
		conn.Close()
		conn, br, why = nil, nil, w
	}
	for ; next.Before(end); next = next.Add(*interval) {
		time.Sleep(time.Until(next))
		if conn != nil {
			switch st, err := idle(conn); st {
			case idleOpen:
			case idleEOF:
				logf(id, conn, "server closed the idle connection")
				drop(goneIdleClosed)
			case idleReset:
				logf(id, conn, "idle connection reset: %v", err)
				drop(goneIdleReset)
			case idleData:
				logf(id, conn, "unexpected bytes on the idle connection")
				drop(goneFailed)
			}
		}
		c.requests.Add(1)
		if conn == nil {
			d := net.Dialer{Timeout: *timeout}
			nc, err := d.Dial("tcp", *addr)
			if err != nil {
				c.failed.Add(1)
				c.connectErrors.Add(1)
				logf(id, nil, "failed: dial: %v", err)
				continue
			}
			if connected {
				switch why {
				case goneIdleClosed:
					c.idleClosed.Add(1)
				case goneIdleReset:
					c.idleReset.Add(1)
				case goneCloseHeader:
					c.closeHeader.Add(1)
				default:
					c.afterFailed.Add(1)
				}
			}
			connected, why = true, goneNone
			conn, br = nc, bufio.NewReaderSize(nc, 4096)
		}
		conn.SetDeadline(time.Now().Add(*timeout))
		if _, err := conn.Write(req); err != nil {
			c.failed.Add(1)
			logf(id, conn, "failed: write: %v", err)
			drop(goneFailed)
			continue
		}
		status, closeAfter, err := readResponse(br)
		if err != nil {
			c.failed.Add(1)
			logf(id, conn, "failed: no complete response: %v", err)
			drop(goneFailed)
			continue
		}
		if status >= 200 && status < 300 {
			c.ok.Add(1)
		} else {
			c.non2xx.Add(1)
			logf(id, conn, "status %d", status)
		}
		if closeAfter {
			logf(id, conn, "response said Connection: close")
			drop(goneCloseHeader)
		}
	}
}

type idleState int

const (
	idleOpen idleState = iota
	idleEOF
	idleReset
	idleData
)

// idle looks at a connection between requests without blocking or consuming
// anything: still open, closed by the server, reset, or holding bytes nobody
// asked for.
func idle(conn net.Conn) (idleState, error) {
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return idleReset, err
	}
	var (
		n    int
		rerr error
		b    [1]byte
	)
	if err := raw.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		return idleReset, err
	}
	switch {
	case rerr == syscall.EAGAIN:
		return idleOpen, nil
	case rerr != nil:
		return idleReset, rerr
	case n == 0:
		return idleEOF, nil
	default:
		return idleData, nil
	}
}

var errBadResponse = errors.New("malformed response")

// readResponse reads one whole response: its status, and whether the
// connection closes after it (Connection: close, or HTTP/1.0 without
// keep-alive). The body is framed by Content-Length or chunked encoding.
func readResponse(br *bufio.Reader) (status int, closeAfter bool, err error) {
	line, err := readLine(br)
	if err != nil {
		return 0, false, err
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	http10 := line[7] == '0'
	closeAfter = http10
	length, chunked := int64(-1), false
	for {
		h, err := readLine(br)
		if err != nil {
			return 0, false, err
		}
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("%w: header %q", errBadResponse, h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.ParseInt(string(value), 10, 64)
			if err != nil || length < 0 {
				return 0, false, fmt.Errorf("%w: header %q", errBadResponse, h)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			v := bytes.ToLower(value)
			if bytes.Contains(v, []byte("close")) {
				closeAfter = true
			} else if http10 && bytes.Contains(v, []byte("keep-alive")) {
				closeAfter = false
			}
		}
	}
	switch {
	case status/100 == 1 || status == 204 || status == 304:
	case chunked:
		err = readChunked(br)
	case length >= 0:
		_, err = br.Discard(int(length))
	default:
		// Framed by the close: read to EOF, and the connection is done.
		_, err = io.Copy(io.Discard, br)
		closeAfter = true
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return status, closeAfter, err
}

func readChunked(br *bufio.Reader) error {
	for {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: chunk size %q", errBadResponse, line)
		}
		if n == 0 {
			for { // trailers
				t, err := readLine(br)
				if err != nil {
					return err
				}
				if len(t) == 0 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(n)); err != nil {
			return err
		}
		if crlf, err := readLine(br); err != nil || len(crlf) != 0 {
			if err == nil {
				err = fmt.Errorf("%w: chunk not followed by CRLF", errBadResponse)
			}
			return err
		}
	}
}

// readLine returns one line without its CRLF; the slice is valid until the
// next read.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}
