package child

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

func TestLoopServes(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	c := tc.dial(t)
	for _, target := range []string{"/a", "/b?q=1", "/c"} {
		r := c.roundTrip(t, target)
		if r.status != 200 || string(r.body) != strings.Split(target, "?")[0] {
			t.Fatalf("%s: status %d body %q", target, r.status, r.body)
		}
		checkDate(t, r.get("Date"))
	}
	c2 := tc.dial(t)
	if r := c2.roundTrip(t, "/other"); string(r.body) != "/other" {
		t.Fatalf("second connection: body %q", r.body)
	}
}

func TestLoopPipelined100(t *testing.T) {
	testSocketPipelined100(t, startChild(t, Config{}, newTestRoutes()))
}

func testSocketPipelined100(t *testing.T, tc *testChild) {
	c := tc.dial(t)
	targets := numberedTargets("/", 100)
	c.send(t, string(pipeline(targets...)))
	var all []*response
	for range targets {
		all = append(all, c.read(t))
	}
	checkInOrder(t, all, targets)
	// 100 answers of 4 KiB: more than one batch and more than a socket
	// buffer, so the loop goes through partial writes between batches.
	targets = numberedTargets("/pad/", 100)
	c.send(t, string(pipeline(targets...)))
	all = all[:0]
	for range targets {
		all = append(all, c.read(t))
	}
	checkInOrder(t, all, targets)
}

// slowReader makes a client that reads in small pieces with pauses, so that
// the child's writes keep finding the socket full.
type slowReader struct {
	r     io.Reader
	slow  int // bytes still to read slowly
	piece int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.slow <= 0 {
		return s.r.Read(p)
	}
	time.Sleep(time.Millisecond)
	n, err := s.r.Read(p[:min(len(p), s.piece)])
	s.slow -= n
	return n, err
}

func TestLoopLargeResponseSlowReader(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	c := tc.dial(t)
	c.Conn.(*net.TCPConn).SetReadBuffer(16 << 10)
	c.send(t, get("/big")+get("/after"))
	// The client reads only once the child's answer piles up unread in the
	// kernel: 8 MiB cannot all fit there, so the child's first write leaves
	// a tail and the child waits for EPOLLOUT before the reader starts.
	server, client := loopPorts(t, tc, c)
	if !loopWaitSocket(t, server, client, func(s loopSocket) bool { return s.tx > 0 }) {
		t.Fatalf("the child's answer never waited in its socket")
	}
	br := bufio.NewReader(&slowReader{r: c.Conn, slow: 1 << 20, piece: 16 << 10})
	r, err := readResponse(br, false)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.body, bigBody()) {
		t.Fatalf("8 MiB body: got %d bytes, different from what was sent", len(r.body))
	}
	// The request queued behind the big answer is served once it is out.
	if r, err := readResponse(br, false); err != nil || string(r.body) != "/after" {
		t.Fatalf("request after the big answer: %v", err)
	}
}

func TestLoopLargePostEcho(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	c := tc.dial(t)
	// The deadline bounds a hang, not the speed.
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	body := bigBody()[:512<<10]
	c.send(t, "POST /echo HTTP/1.1\r\n"+hostLine+"Content-Length: "+itoa(len(body))+"\r\n\r\n")
	for i := 0; i < len(body); i += 8 << 10 {
		if _, err := c.Write(body[i : i+8<<10]); err != nil {
			t.Fatal(err)
		}
		if i%(64<<10) == 0 {
			// The child sees the body arrive in pieces: it has read this
			// one before the next is sent.
			server, client := loopPorts(t, tc, c)
			if !loopWaitSocket(t, server, client, func(s loopSocket) bool { return s.rx == 0 && s.peerTx == 0 }) {
				t.Fatalf("the child did not read the body's first %d bytes", i+8<<10)
			}
		}
	}
	r := c.read(t)
	if r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("echo of 512 KiB: status %d, %d bytes back, intact %v", r.status, len(r.body), bytes.Equal(r.body, body))
	}
	if r := c.roundTrip(t, "/next"); string(r.body) != "/next" {
		t.Fatalf("after the large POST: %q", r.body)
	}
}

func TestLoopChunkedPostEcho(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	c := tc.dial(t)
	var chunks []string
	var want []byte
	for i := 0; i < 30; i++ {
		chunk := string(bigBody()[i*10000 : (i+1)*10000])
		chunks = append(chunks, chunk)
		want = append(want, chunk...)
	}
	req := chunkedPost("/echo", chunks, "X-Trailer: 1")
	for i := 0; i < len(req); i += 7000 {
		c.send(t, req[i:min(i+7000, len(req))])
	}
	if r := c.read(t); !bytes.Equal(r.body, want) {
		t.Fatalf("chunked echo: %d bytes back of %d", len(r.body), len(want))
	}
}

func TestLoopExpectContinue(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	c := tc.dial(t)
	c.send(t, "POST /echo HTTP/1.1\r\n"+hostLine+"Expect: 100-continue\r\nContent-Length: 11\r\n\r\n")
	if r := c.read(t); r.status != 100 {
		t.Fatalf("before the body: status %d, want 100", r.status)
	}
	c.send(t, "hello world")
	if r := c.read(t); r.status != 200 || string(r.body) != "hello world" {
		t.Fatalf("after the body: status %d body %q", r.status, r.body)
	}
}

// A rejected client reads its error status and then a clean EOF, even while
// it keeps sending: the child shuts down its side and drains the rest
// instead of closing with unread data, which would reset the connection.
func TestLoopRejectThenEOF(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	for _, together := range []bool{false, true} {
		c := tc.dial(t)
		bad := "GET / HTTP/1.1\r\nHost : a\r\n\r\n"
		garbage := bytes.Repeat([]byte("garbage\r\n"), 1<<10)
		if together {
			c.send(t, bad+string(garbage))
		} else {
			c.send(t, bad)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // errors are expected once the child has closed
			defer wg.Done()
			for i := 0; i < 8; i++ {
				if _, err := c.Write(garbage); err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		r := c.read(t)
		if r.status != 400 || r.get("Connection") != "close" {
			t.Errorf("status %d Connection %q, want 400 close", r.status, r.get("Connection"))
		}
		rest, err := io.ReadAll(c.br)
		if err != nil || len(rest) != 0 {
			t.Errorf("after the error status: %q, %v; want a clean EOF", rest, err)
		}
		wg.Wait()
	}
}

// A connection adopted after the loop slept through an idle wait gets the
// whole header timeout: its deadline counts from the turn that adopts it,
// not from the turn before the wait, up to a second earlier.
func TestLoopHeaderTimeoutAfterIdleWait(t *testing.T) {
	to := DefaultTimeouts
	to.Header = 1500 * time.Millisecond
	st := new(ipc.Cell)
	tc := startChild(t, Config{Timeouts: to, Stats: st}, newTestRoutes())
	// Catch the loop just after a turn of its idle wait (it wakes once a
	// second), and let most of the next second pass before connecting.
	turns := st.Turns.Load()
	for deadline := time.Now().Add(5 * time.Second); st.Turns.Load() == turns; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the idle loop did not turn within 5 s")
		}
	}
	time.Sleep(800 * time.Millisecond)
	start := time.Now()
	c := tc.dial(t) // a client that says nothing
	// The bound is only on a hang.
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.ReadAll(c.br); err != nil {
		t.Fatalf("silent connection: %v; want it closed at the header timeout", err)
	}
	// The child keeps its deadlines in wall time, the test in monotonic.
	if waited := time.Since(start); waited < to.Header-5*time.Millisecond {
		t.Errorf("closed %v after it was passed, before the header timeout of %v", waited, to.Header)
	}
}

func TestLoopIdleTimeout(t *testing.T) {
	to := DefaultTimeouts
	to.Idle = time.Second
	tc := startChild(t, Config{Timeouts: to}, newTestRoutes())
	c := tc.dial(t)
	// The idle time starts when the child has read the request, which is
	// after the client sent it: measured from before the send, the idle
	// time seen here is never shorter than the child's.
	start := time.Now()
	c.roundTrip(t, "/")
	c.SetReadDeadline(time.Now().Add(15 * time.Second)) // the sweep runs once a second; this is only a bound on a hang
	if n, err := c.br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %d, %v; want EOF", n, err)
	}
	// A few milliseconds of slack: the child keeps its deadlines in wall
	// time, the test measures in monotonic time.
	if waited := time.Since(start); waited < to.Idle-5*time.Millisecond {
		t.Errorf("closed %v after the request was sent, before the idle timeout of %v", waited, to.Idle)
	}
}

// A drain lets the request in progress finish, with Connection: close. An
// idle keep-alive connection may still send a request (its client may have
// had one on the wire), answered with Connection: close; a silent one closes
// at the sweep; a connection passed after the drain is served and closed. Then
// Run returns nil.
func TestLoopDrain(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	silent := tc.dial(t)
	silent.roundTrip(t, "/")
	speaks := tc.dial(t)
	speaks.roundTrip(t, "/")
	busy := tc.dial(t)
	busy.send(t, "POST /echo HTTP/1.1\r\n"+hostLine+"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	if r := busy.read(t); r.status != 100 { // the child holds the request now
		t.Fatalf("status %d, want 100", r.status)
	}
	tc.send(t, ipc.CmdDrain)
	// Sent behind the drain on the channel, before the master could know:
	// served, with Connection: close.
	late := tc.dial(t)
	if r := late.roundTrip(t, "/late"); string(r.body) != "/late" || r.get("Connection") != "close" {
		t.Fatalf("connection passed after the drain: body %q Connection %q", r.body, r.get("Connection"))
	}
	expectEOF(t, "connection passed after the drain", late)

	if r := speaks.roundTrip(t, "/last"); string(r.body) != "/last" || r.get("Connection") != "close" {
		t.Fatalf("idle connection speaking after the drain: body %q Connection %q", r.body, r.get("Connection"))
	}
	expectEOF(t, "idle connection answered after the drain", speaks)

	busy.send(t, "hello")
	r := busy.read(t)
	if r.status != 200 || string(r.body) != "hello" || r.get("Connection") != "close" {
		t.Fatalf("request in progress: status %d body %q Connection %q", r.status, r.body, r.get("Connection"))
	}
	expectEOF(t, "drained connection", busy)
	expectEOF(t, "silent idle connection", silent)
	if err := tc.wait(t); err != nil {
		t.Fatalf("Run after a drain: %v, want nil", err)
	}
}

func expectEOF(t *testing.T, what string, c *client) {
	t.Helper()
	if n, err := c.br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("%s: read %d, %v; want EOF", what, n, err)
	}
}

func TestLoopMasterGone(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	c := tc.dial(t)
	c.roundTrip(t, "/")
	if err := tc.stop(t); err != ErrMasterGone {
		t.Fatalf("Run: %v, want ErrMasterGone", err)
	}
	expectEOF(t, "connection of a child whose master went away", c)
}

func TestLoopStop(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	tc.dial(t).roundTrip(t, "/")
	tc.send(t, ipc.CmdStop)
	if err := tc.wait(t); err != nil {
		t.Fatalf("Run after CmdStop: %v, want nil", err)
	}
}

// Everything a child opens (poller, self-pipe, eventfd, connections) is
// closed when Run returns, in both modes and whatever state the
// connections were in.
func TestLoopNoFdLeak(t *testing.T) {
	warmUpNetpoll(t)
	before := countFds(t)
	for _, pool := range []int{0, 2} {
		tc := startChild(t, Config{Pool: pool}, newTestRoutes())
		served := tc.dial(t)
		served.roundTrip(t, "/")
		partial := tc.dial(t)
		partial.send(t, "GET / HTTP/1.1\r\nHost")
		rejected := tc.dial(t)
		rejected.send(t, "BAD\r\n\r\n")
		rejected.read(t)
		if err := tc.stop(t); err != ErrMasterGone {
			t.Fatalf("pool %d: Run: %v", pool, err)
		}
		for _, c := range []*client{served, partial, rejected} {
			c.Close()
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	after := countFds(t)
	for after != before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		after = countFds(t)
	}
	if after != before {
		t.Fatalf("%d fds open before the children ran, %d after", before, after)
	}
}

// warmUpNetpoll makes the runtime open its netpoll descriptors, which stay
// open for the life of the process, before fds are counted.
func warmUpNetpoll(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ln.Close()
}

func countFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Listener 0 means none, so a client that lands on fd 0 (a child started
// with stdin closed) is served like any other rather than taken for the
// listener.
func TestLoopClientOnFdZero(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	saved, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	nc, fd := tc.ln.Dial(t, &net.Dialer{})
	unix.Close(0) // the child's copy of the connection takes the lowest free fd
	tc.pass(t, fd)
	c := &client{Conn: nc, br: bufio.NewReader(nc)}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	c.send(t, get("/zero"))
	r, err := readResponse(c.br, false)
	link, _ := os.Readlink("/proc/self/fd/0")
	tc.stop(t) // closes the child's fd 0 before stdin is put back
	unix.Dup3(saved, 0, 0)
	unix.Close(saved)
	// Wherever the connection landed, it must be served.
	if err != nil {
		t.Fatalf("client (connection on %s): %v", link, err)
	}
	if r.status != 200 || string(r.body) != "/zero" {
		t.Fatalf("client (connection on %s): status %d body %q, want 200 /zero", link, r.status, r.body)
	}
	if !strings.HasPrefix(link, "socket:") {
		t.Skipf("the connection was served, but did not land on fd 0 (%s): another fd took it", link)
	}
}

// A reuseport child that drains takes what is queued on its own listener
// before it closes it (the kernel would reset those connections); their
// first answer already says Connection: close. The child here is full
// (MaxConns 1), so its listener is out of the poll set and the second
// connection waits in the backlog until the drain.
func TestLoopDrainTakesListenerQueue(t *testing.T) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(lfd)
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 16); err != nil {
		unix.Close(lfd)
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(lfd)
	addr := net.JoinHostPort("127.0.0.1", itoa(sa.(*unix.SockaddrInet4).Port))
	tc := startChild(t, Config{Listener: lfd, MaxConns: 1}, newTestRoutes())
	dial := func() *client {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		return &client{Conn: nc, br: bufio.NewReader(nc)}
	}
	first := dial()
	if r := first.roundTrip(t, "/first"); string(r.body) != "/first" {
		t.Fatalf("first connection: %q", r.body)
	}
	queued := dial()
	queued.send(t, get("/queued"))
	// The connection and its request wait in the listener's accept queue
	// (held by no process: inode 0); a child that took it would hold it.
	port := sa.(*unix.SockaddrInet4).Port
	peer := queued.LocalAddr().(*net.TCPAddr).Port
	var seen loopSocket
	if !loopWaitSocket(t, port, peer, func(s loopSocket) bool {
		seen = s
		return s.inode != 0 || s.rx == len(get("/queued"))
	}) || seen.inode != 0 {
		t.Fatalf("the second connection is not waiting in the accept queue with its request: %+v (a full child took it?)", seen)
	}

	tc.send(t, ipc.CmdDrain)
	r := queued.read(t)
	if r.status != 200 || string(r.body) != "/queued" || r.get("Connection") != "close" {
		t.Fatalf("queued connection after the drain: status %d body %q Connection %q", r.status, r.body, r.get("Connection"))
	}
	expectEOF(t, "queued connection answered during the drain", queued)
}

// loopPorts are the ports of the server and client ends of c.
func loopPorts(t *testing.T, tc *testChild, c *client) (server, client int) {
	t.Helper()
	_, p, err := net.SplitHostPort(tc.ln.Addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	return port, c.LocalAddr().(*net.TCPAddr).Port
}

// loopSocket is the server end of a loopback connection as the kernel
// reports it, with the client end's send queue.
type loopSocket struct {
	tx, rx int    // bytes sent and not acknowledged; received and not read
	inode  uint64 // 0 while no process holds it (in the accept queue)
	peerTx int    // the client end's unacknowledged bytes
}

// loopWaitSocket polls the kernel until the server end of the connection
// between local port port and client port peer satisfies cond, for up to
// ten seconds. It asks for the two sockets by address (sock_diag), which
// costs the same on a machine with tens of thousands of sockets.
func loopWaitSocket(t *testing.T, port, peer int, cond func(loopSocket) bool) bool {
	t.Helper()
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nl)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		server, okServer := tcpDiag(t, nl, port, peer)
		client, okClient := tcpDiag(t, nl, peer, port)
		if okServer && okClient && cond(loopSocket{tx: server.tx, rx: server.rx, inode: server.inode, peerTx: client.tx}) {
			return true
		}
	}
	return false
}

// tcpDiag looks up the TCP socket 127.0.0.1:local -> 127.0.0.1:remote
// (inet_diag_req_v2 without a dump: one socket, found by its address).
func tcpDiag(t *testing.T, nl, local, remote int) (s loopSocket, found bool) {
	t.Helper()
	const sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	req := make([]byte, unix.NLMSG_HDRLEN+56)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = unix.AF_INET, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(r[4:], ^uint32(0)) // every state
	binary.BigEndian.PutUint16(r[8:], uint16(local))
	binary.BigEndian.PutUint16(r[10:], uint16(remote))
	copy(r[12:], []byte{127, 0, 0, 1}) // source, then destination
	copy(r[28:], []byte{127, 0, 0, 1})
	binary.NativeEndian.PutUint64(r[48:], ^uint64(0)) // INET_DIAG_NOCOOKIE
	if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(nl, buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n < unix.NLMSG_HDRLEN+72 || binary.NativeEndian.Uint16(buf[4:]) != sockDiagByFamily {
		return s, false // NLMSG_ERROR: no such socket (yet, or any more)
	}
	m := buf[unix.NLMSG_HDRLEN:n] // inet_diag_msg: 4 bytes, the id (48), expires, then these
	return loopSocket{
		rx:    int(binary.NativeEndian.Uint32(m[56:])),
		tx:    int(binary.NativeEndian.Uint32(m[60:])),
		inode: uint64(binary.NativeEndian.Uint32(m[68:])),
	}, true
}

// A connection handed on with its request already read (CmdConn, from a
// retired child or an old master) is answered at once, however the loop
// takes new connections: its client has nothing more to send, so no read
// event would ever announce that request. Here the loop has turned to
// arming new connections first (their early reads all found nothing).
func TestLoopServesCarriedRequestWhenArmingFirst(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	var silent []*client // connections whose clients send nothing
	for range 2 * earlyWindow {
		silent = append(silent, tc.dial(t))
	}
	for i := range 2 {
		nc, fd := tc.ln.Dial(t, &net.Dialer{})
		target := "/carried" + itoa(i)
		if err := tc.master.SendConn(ipc.Msg{}, fd, []byte(get(target))); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		c := &client{Conn: nc, br: bufio.NewReader(nc)}
		if r := c.read(t); r.status != 200 || string(r.body) != target {
			t.Fatalf("carried request %d: status %d body %q", i, r.status, r.body)
		}
	}
	// The silent ones are still served once they speak.
	if r := silent[0].roundTrip(t, "/late"); r.status != 200 || string(r.body) != "/late" {
		t.Fatalf("silent connection: status %d body %q", r.status, r.body)
	}
}

// Requests served in one turn still publish different starts in the stats
// cell: the master tells a request's method and path from the next one's
// by its start, and pipelined requests share the turn's clock.
func TestPipelinedStartsDiffer(t *testing.T) {
	st := new(ipc.Cell)
	starts := make(chan int64, 8)
	tc := startChild(t, Config{Stats: st}, HandlerFunc(func(w *Response, r *Request) {
		starts <- st.ReqStart.Load()
		w.Write([]byte("ok"))
	}))
	c := tc.dial(t)
	c.send(t, strings.Repeat(get("/"), 4))
	for range 4 {
		if r := c.read(t); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	prev := int64(0)
	for range 4 {
		s := <-starts
		if s <= prev {
			t.Fatalf("a pipelined request published start %d after %d", s, prev)
		}
		prev = s
	}
}
