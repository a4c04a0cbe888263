package main

// Limits and hostile conditions: backpressure at -max-conns, a master out of
// file descriptors, clients that reset in the middle of a large response,
// and the request limits set through flags.

import (
	"bufio"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// backlogged reports whether the server side of the connection from
// client port peer to local port is established but held by no process
// (inode 0): still in the listening socket's accept queue, never accepted.
func backlogged(t *testing.T, port, peer int) bool {
	t.Helper()
	return pollFor(3*time.Second, func() bool {
		e, found := serverSocket(t, port, peer)
		return found && e.state == tcpEstablished && e.inode == 0
	})
}

// sendQueue is how many bytes the server side of the connection from
// client port peer to local port has written but the client has not
// acknowledged (tx_queue in /proc/net/tcp); -1 when the entry was missed.
func sendQueue(t *testing.T, port, peer int) int64 {
	t.Helper()
	e, found := serverSocket(t, port, peer)
	if !found {
		return -1
	}
	return e.txQueue
}

// TestMaxConnsBackpressure: with one child and -max-conns 3, a fourth
// connection is completed by the kernel but left in the backlog, unanswered,
// while three are open; closing one lets the master accept and hand it over.
func TestMaxConnsBackpressure(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-max-conns=3")
	s.waitReady(1)
	const req = "GET / HTTP/1.1\r\nHost: obs\r\n\r\n"
	var open []*clientConn
	for i := range 3 {
		c := s.dial(t)
		if r, err := c.roundTrip(req); err != nil || r.status != 200 || r.body != helloBody {
			t.Fatalf("connection %d: %+v, %v", i, r, err)
		}
		open = append(open, c)
	}

	fourth := s.dial(t) // the kernel completes the handshake: it is queued
	if _, err := fourth.Write([]byte(req)); err != nil {
		t.Fatalf("fourth connection: write: %v", err)
	}
	fourth.SetReadDeadline(time.Now().Add(time.Second))
	if r, err := fourth.readResponse(); err == nil {
		t.Fatalf("fourth connection answered while 3 are open: %+v", r)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("fourth connection, while 3 are open: %v; want no answer (a timeout), not a close", err)
	}
	peer := fourth.LocalAddr().(*net.TCPAddr).Port
	if !backlogged(t, s.port, peer) {
		t.Errorf("the fourth connection (client port %d) is not waiting in the accept queue: the master accepted it", peer)
	}

	// One closes: the fourth is accepted and answered.
	open[0].Close()
	start := time.Now()
	fourth.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := fourth.readResponse()
	if err != nil || r.status != 200 || r.body != helloBody {
		t.Fatalf("fourth connection after one closed: %+v, %v", r, err)
	}
	t.Logf("fourth connection answered %v after one of the three closed", time.Since(start).Round(time.Millisecond))
	// And the others are still served.
	for i, c := range open[1:] {
		if r, err := c.roundTrip(req); err != nil || r.status != 200 {
			t.Errorf("connection %d after the fourth got in: %+v, %v", i+1, r, err)
		}
	}
}

// pendingRequests dials n connections at once and sends each a request; the
// returned channel gets one value per connection when its answer arrives (or
// an error), and answered counts the answers.
func pendingRequests(t *testing.T, s *server, n int) (<-chan error, *atomic.Int32) {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", s.addr, ioTimeout)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i, n, err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	done := make(chan error, n)
	answered := new(atomic.Int32)
	for i, c := range conns {
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: obs\r\nConnection: close\r\n\r\n")); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		go func() {
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			r, err := readResponse(bufio.NewReader(c))
			if err == nil && (r.status != 200 || r.body != helloBody) {
				err = fmt.Errorf("status %d body %q", r.status, r.body)
			}
			if err != nil {
				err = fmt.Errorf("connection %d: %v", i, err)
			} else {
				answered.Add(1)
			}
			done <- err
		}()
	}
	return done, answered
}

// TestMasterOutOfFds lowers the master's RLIMIT_NOFILE from outside with
// prlimit(2). With a few fds to spare it still serves a burst of 20
// connections (it hands each one over and closes its copy); with none to
// spare the 20 wait in the backlog while the master neither dies nor spins
// nor floods its log, and once the limit is raised again every one of them
// is answered.
func TestMasterOutOfFds(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	kids := s.waitReady(2)
	if r := s.get(t, "/"); r.status != 200 {
		t.Fatalf("GET /: %d", r.status)
	}
	var orig unix.Rlimit
	if err := unix.Prlimit(s.pid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
		t.Fatalf("prlimit(%d): %v", s.pid, err)
	}
	t.Cleanup(func() { unix.Prlimit(s.pid, unix.RLIMIT_NOFILE, &orig, nil) })
	setLimit := func(cur uint64) {
		t.Helper()
		if err := unix.Prlimit(s.pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: cur, Max: orig.Max}, nil); err != nil {
			t.Fatalf("prlimit(%d, RLIMIT_NOFILE, %d): %v", s.pid, cur, err)
		}
	}
	fds, err := fdTargets(s.pid)
	if err != nil {
		t.Fatal(err)
	}
	const burst = 20

	// A few to spare: the master accepts what it can, hands it over, and
	// goes on; the burst is served without any help.
	setLimit(uint64(len(fds) + 5))
	from := len(s.log.snapshot())
	done, _ := pendingRequests(t, s, burst)
	for range burst {
		if err := <-done; err != nil {
			t.Errorf("with 5 fds to spare: %v", err)
		}
	}
	emfile := 0
	for _, line := range s.log.snapshot()[from:] {
		if strings.Contains(line, "out of file descriptors") {
			emfile++
		}
	}
	t.Logf("with 5 fds to spare (limit %d): %d connections answered; %d \"out of file descriptors\" lines",
		len(fds)+5, burst, emfile)
	setLimit(orig.Cur)

	// None to spare: every connection waits, and is answered once the
	// limit is back.
	lines := starve(t, s, s.pid, "the master", burst)
	var times []time.Time
	for _, line := range lines {
		times = append(times, lineTime(t, line))
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < 950*time.Millisecond {
			t.Errorf("\"out of file descriptors\" logged twice %v apart, want a second at least", gap)
		}
	}
	if now := s.children(); !slices.Equal(now, kidPids(kids)) {
		t.Errorf("children %v, want the same as before %v", now, kidPids(kids))
	}
}

// TestMaxConnsReload raises -max-conns through the config file and a
// reload: the master, which admits connections for the children, must
// follow the new limit.
func TestMaxConnsReload(t *testing.T) {
	t.Parallel()
	conf := writeConfig(t, "max-conns = 1\n")
	s := startServer(t, "-workers=1", "-config="+conf)
	s.waitReady(1)
	const req = "GET / HTTP/1.1\r\nHost: obs\r\n\r\n"
	served := func(c *clientConn, what string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		if r, err := c.readResponse(); err != nil || r.status != 200 {
			t.Fatalf("%s: %+v, %v", what, r, err)
		}
	}
	waiting := func(c *clientConn, what string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if r, err := c.readResponse(); err == nil {
			t.Fatalf("%s answered: %+v; want it left waiting", what, r)
		} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("%s: %v; want it left waiting", what, err)
		}
	}
	open := func() *clientConn {
		c := s.dial(t)
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := open()
	served(first, "first connection at max-conns 1")
	second := open()
	waiting(second, "second connection at max-conns 1")
	first.Close()
	served(second, "second connection once the first closed")
	second.Close()

	rewrite(t, conf, "max-conns = 3\n")
	s.signal(unix.SIGHUP)
	// Reloaded, and the old child gone: only the new one takes connections.
	reGone := regexp.MustCompile(`msg="child exited" pid=\d+ slot=0 gen=0 `)
	if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, `msg="reload done" gen=1`) }) &&
			slices.ContainsFunc(lines, reGone.MatchString)
	}) {
		t.Fatalf("no \"reload done\" and exit of the old child within %v; log:\n%s", startTimeout, s.log)
	}
	for i := range 3 {
		served(open(), fmt.Sprintf("connection %d at max-conns 3", i+1))
	}
	waiting(open(), "a fourth connection at max-conns 3")
}

// connsHeld is how many connections (sockets on local port port other
// than listeners) pid holds.
func connsHeld(t *testing.T, pid, port int) int {
	t.Helper()
	table, err := heldSockets(port)
	if err != nil {
		t.Fatal(err)
	}
	inodes, err := socketInodes(pid)
	if err != nil {
		t.Fatalf("sockets of %d: %v", pid, err)
	}
	n := 0
	for _, e := range table {
		if e.state != tcpListen && inodes[e.inode] {
			n++
		}
	}
	return n
}

// starve sets pid's RLIMIT_NOFILE to its lowest free fd number, so that
// accept4 there fails with EMFILE however many connections wait, and opens
// burst connections with a request each. For two seconds none may be
// answered, pid must stay alive without spinning (under 0.5 s of CPU) and
// log "out of file descriptors" at least once and at most once a second
// (lines saying "too many open files" count too).
// Then the limit goes back and every connection must be answered. It
// returns the log lines that said "out of file descriptors".
func starve(t *testing.T, s *server, pid int, who string, burst int) []string {
	t.Helper()
	var orig unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
		t.Fatalf("prlimit(%d): %v", pid, err)
	}
	t.Cleanup(func() { unix.Prlimit(pid, unix.RLIMIT_NOFILE, &orig, nil) })
	// The fd table must hold still across the change: a connection the
	// process closes just after the look would leave a free fd under the
	// limit. First the process holds no connection (one it still had would
	// be closed soon); then, once the limit is set, every fd under it must
	// still be open.
	if !pollFor(startTimeout, func() bool { return connsHeld(t, pid, s.port) == 0 }) {
		t.Fatalf("%s (pid %d) still holds %d connections on port %d", who, pid, connsHeld(t, pid, s.port), s.port)
	}
	fdSet := func() []int {
		fds, err := fdTargets(pid)
		if err != nil {
			t.Fatal(err)
		}
		return sortedKeys(fds)
	}
	lowest := 0
	for try := 0; ; try++ {
		before := fdSet()
		lowest = 0
		for lowest < len(before) && before[lowest] == lowest {
			lowest++
		}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(lowest), Max: orig.Max}, nil); err != nil {
			t.Fatalf("prlimit(%d, RLIMIT_NOFILE, %d): %v", pid, lowest, err)
		}
		after := fdSet()
		if len(after) >= lowest && slices.Equal(after[:lowest], before[:lowest]) {
			break // fds 0 to lowest-1 all open: nothing can be opened
		}
		if try == 40 {
			t.Fatalf("the fds of %s (pid %d) keep changing", who, pid)
		}
	}
	from := len(s.log.snapshot())
	done, answered := pendingRequests(t, s, burst)
	cpu0, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(2 * time.Second)
	cpu1, err := cpuTime(pid)
	window := time.Since(start)
	if err != nil || !pidAlive(pid) {
		t.Fatalf("%s (pid %d) died out of fds (%v); log:\n%s", who, pid, err, s.log)
	}
	if n := answered.Load(); n != 0 {
		t.Errorf("%d connections answered while %s had no fd to accept them with", n, who)
	}
	cpu := cpu1 - cpu0
	if cpu >= 500*time.Millisecond {
		t.Errorf("%s used %v of CPU in %v out of fds: it spins", who, cpu, window.Round(time.Millisecond))
	}
	var lines []string
	for _, line := range s.log.snapshot()[from:] {
		if strings.Contains(line, "out of file descriptors") || strings.Contains(line, "too many open files") {
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		t.Errorf("%s did not log \"out of file descriptors\" in %v without fds", who, window.Round(time.Millisecond))
	}
	if most := int(window/time.Second) + 1; len(lines) > most {
		t.Errorf("%s logged \"out of file descriptors\" %d times in %v, want at most %d", who, len(lines), window.Round(time.Millisecond), most)
	}
	t.Logf("%s out of fds (limit %d) with %d connections waiting: %v of CPU in %v; %d \"out of file descriptors\" lines",
		who, lowest, burst, cpu, window.Round(time.Millisecond), len(lines))

	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &orig, nil); err != nil {
		t.Fatalf("prlimit(%d) back to %d: %v", pid, orig.Cur, err)
	}
	start = time.Now()
	for range burst {
		if err := <-done; err != nil {
			t.Errorf("after the limit of %s was raised: %v", who, err)
		}
	}
	t.Logf("all %d waiting connections answered %v after the limit was raised", burst, time.Since(start).Round(time.Millisecond))
	return lines
}

// TestChildOutOfFds is the same in reuseport mode, where each child accepts
// on its own listener: a child out of fds must rest, not spin and flood the
// log, and serve what waited once it has fds again.
func TestChildOutOfFds(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-mode=reuseport")
	kids := s.waitReady(1)
	if r := s.get(t, "/"); r.status != 200 {
		t.Fatalf("GET /: %d", r.status)
	}
	starve(t, s, kids[0].pid, "the child", 10)
	if now := s.children(); !slices.Equal(now, kidPids(kids)) {
		t.Errorf("children %v, want the same as before %v", now, kidPids(kids))
	}
}

// TestResetDuringLargeResponse: clients ask for a 1 MiB echo and reset the
// connection (SO_LINGER 0) before reading it, some at once and some once the
// child is stuck on a full socket. The children must survive (no SIGPIPE,
// no crash on ECONNRESET/EPIPE), close every such connection, and keep
// serving the other clients throughout.
func TestResetDuringLargeResponse(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-admin=127.0.0.1:0")
	kids := s.waitReady(2)
	admin := adminAddr(t, s)
	pids := kidPids(kids)
	slices.Sort(pids)

	// Other clients, served all along.
	others := []*clientConn{s.dial(t), s.dial(t)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served atomic.Int32
	errs := make(chan error, len(others))
	for i, c := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 20000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				c.SetDeadline(time.Now().Add(ioTimeout))
				r, err := c.roundTrip("GET / HTTP/1.1\r\nHost: other\r\n\r\n")
				if err == nil && (r.status != 200 || r.body != helloBody) {
					err = fmt.Errorf("status %d body %q", r.status, r.body)
				}
				if err != nil {
					errs <- fmt.Errorf("other client %d request %d: %v", i, n, err)
					return
				}
				served.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	body := strings.Repeat("x", 1<<20)
	request := fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: obs\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	dialer := rcvbufDialer(4096)
	// Even clients reset as soon as their request is out (the child may be
	// reading it still, or writing). Odd ones pipeline the same request six
	// times: 6 MiB of answers cannot fit in the kernel's buffers (4 MiB of
	// send buffer at most, 4 KiB of receive window), so the child is left
	// waiting for EPOLLOUT with output pending when the reset comes.
	const resets = 8
	var maxOut int64
	for i := range resets {
		c, err := dialer.Dial("tcp", s.addr)
		if err != nil {
			t.Fatalf("reset client %d: %v", i, err)
		}
		tc := c.(*net.TCPConn)
		raw := request
		if i%2 == 1 {
			raw = strings.Repeat(request, 6)
		}
		wrote := make(chan error, 1)
		go func() {
			tc.SetWriteDeadline(time.Now().Add(2 * time.Second))
			_, err := tc.Write([]byte(raw))
			wrote <- err
		}()
		if i%2 == 0 {
			if err := <-wrote; err != nil {
				t.Fatalf("reset client %d: write: %v", i, err)
			}
		} else {
			// Until the child's output stalls on the full socket: the
			// server side's send queue, sampled every 30 ms, stops
			// growing. That is the point of the case: without it the
			// reset would not meet a pending write.
			peer := tc.LocalAddr().(*net.TCPAddr).Port
			var last int64 = -1
			stalled := pollFor(ioTimeout, func() bool {
				time.Sleep(30 * time.Millisecond)
				q := sendQueue(t, s.port, peer)
				stalled := q > 1<<20 && q == last
				last = q
				return stalled
			})
			if !stalled {
				t.Fatalf("reset client %d: the child's output never stalled on the full socket in %v (send queue %d bytes)", i, ioTimeout, last)
			}
			maxOut = max(maxOut, last)
		}
		tc.SetLinger(0)
		tc.Close() // RST
		if i%2 == 1 {
			<-wrote // the close ends a write still blocked
		}
	}
	t.Logf("pipelined clients: the kernel took at most %d of their %d bytes of answers before the reset", maxOut, 6*(1<<20))
	if maxOut >= 6*(1<<20) {
		t.Errorf("a pipelined client got all its answers into the kernel: the reset did not meet a pending write")
	}

	// Every reset connection is closed by its child, and nothing else.
	var st statusDoc
	if !pollFor(5*time.Second, func() bool {
		st = getStatus(t, admin)
		tot := st.totals()
		return tot.accepted == resets+uint64(len(others)) && tot.open == uint64(len(others))
	}) {
		t.Errorf("/status after %d resets: %+v; want %d accepted, %d open", resets, st.totals(), resets+len(others), len(others))
	}
	t.Logf("after %d resets: %+v", resets, st.totals())

	// The others kept being served, and still are.
	before := served.Load()
	if !pollFor(3*time.Second, func() bool { return served.Load() >= before+10 }) {
		t.Errorf("the other clients made %d requests in 3 s after the resets", served.Load()-before)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if now := s.children(); !slices.Equal(now, pids) {
		t.Errorf("children are %v after the resets, were %v", now, pids)
	}
	for _, line := range s.log.snapshot() {
		if strings.Contains(line, "child died") || strings.Contains(line, "child exited") || strings.Contains(line, "panic") {
			t.Errorf("master log: %s", line)
		}
	}
	for _, pid := range pids {
		if r := s.get(t, "/"); r.status != 200 {
			t.Errorf("GET / after the resets (child %d alive): %d", pid, r.status)
		}
	}
}

// TestRequestLimitFlags sets the request limits through flags and checks
// each at its boundary: at the limit served, one byte (or field) over it
// rejected with its status and Connection: close.
func TestRequestLimitFlags(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-max-body=100", "-max-request-line=100", "-max-headers=3")
	s.waitReady(1)

	post := func(n int) string {
		return fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: obs\r\nContent-Length: %d\r\n\r\n%s", n, strings.Repeat("b", n))
	}
	line := func(n int) string { // a request line of n bytes, CRLF not counted
		target := "/echo?"
		target += strings.Repeat("q", n-len("GET "+target+" HTTP/1.1"))
		return "GET " + target + " HTTP/1.1\r\nHost: obs\r\n\r\n"
	}
	headers := func(n int) string { // Host plus n-1 more fields
		var b strings.Builder
		b.WriteString("GET / HTTP/1.1\r\nHost: obs\r\n")
		for i := 1; i < n; i++ {
			fmt.Fprintf(&b, "X-Field-%d: %d\r\n", i, i)
		}
		b.WriteString("\r\n")
		return b.String()
	}
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"body of 100 bytes", post(100), 200},
		{"body of 101 bytes", post(101), 413},
		{"request line of 100 bytes", line(100), 200},
		{"request line of 101 bytes", line(101), 414},
		{"3 header fields", headers(3), 200},
		{"4 header fields", headers(4), 431},
	}
	for _, tc := range cases {
		c := s.dial(t)
		r, err := c.roundTrip(tc.raw)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if r.status != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, r.status, tc.status)
		}
		if tc.status != 200 {
			if !r.close {
				t.Errorf("%s: %d without Connection: close", tc.name, r.status)
			}
			if err := c.waitClosed(ioTimeout); err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
		}
		c.Close()
	}
}
