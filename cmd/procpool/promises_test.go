package main

// Promises of the README that no other test holds the server to: the ends
// of a stop (-grace running out, SIGINT, SIGQUIT), the staged close and the
// other per-connection timeouts, fatal children, what a reload may not
// change, -user in reuseport mode and -log-json.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGraceRunsOut: a graceful stop waits -grace for the request in
// progress; when it runs out the master kills the child still holding it
// and exits 0.
func TestGraceRunsOut(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	s := startServer(t, "-workers=2", "-grace="+grace.String())
	pids := kidPids(s.waitReady(2))
	half := s.dial(t)
	if _, err := io.WriteString(half, halfRequest); err != nil {
		t.Fatal(err)
	}
	holder := s.waitHolder(t, half, pids)
	holderID, err := identify(holder)
	if err != nil {
		t.Fatal(err)
	}

	begin := time.Now()
	s.signal(syscall.SIGTERM)
	s.waitExit(grace+stopTimeout, "SIGTERM")
	took := time.Since(begin)
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("master exited with %v after the grace ran out, want status 0", s.cmd.ProcessState)
	}
	if took < grace {
		t.Errorf("master exited %v after SIGTERM, before -grace=%v ran out, with a request in progress", took, grace)
	}
	if holderID.alive() {
		t.Errorf("child %d, holding the unfinished request, outlived the master", holder)
	}
	// Its end, in the log: after the stop began, killed, reaped.
	lines := s.log.snapshot()
	stop := lineIndex(lines, `msg="graceful stop"`)
	kill := lineIndex(lines, `msg="killing child past the grace period"`, fmt.Sprintf(" pid=%d ", holder))
	reaped := lineIndex(lines, fmt.Sprintf(" pid=%d ", holder), "signal=killed")
	if stop < 0 || kill < stop || reaped < kill {
		t.Errorf("log lines: graceful stop at %d, kill of child %d at %d, its death by SIGKILL at %d; want them all, in this order; log:\n%s",
			stop, holder, kill, reaped, strings.Join(lines, "\n"))
	}
	for _, pid := range pids {
		if pid != holder && lineIndex(lines, `msg="killing child past the grace period"`, fmt.Sprintf(" pid=%d ", pid)) >= 0 {
			t.Errorf("child %d, idle, was killed rather than drained", pid)
		}
	}
	// The request was never answered.
	if err := half.waitClosed(ioTimeout); err != nil {
		t.Errorf("connection with the unfinished request: %v", err)
	}
}

// TestFastStop: SIGINT stops at once: the children exit without finishing
// the request in progress, which a graceful stop would wait for (here up to
// -grace=60s), and the master exits by itself.
func TestFastStop(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-grace=60s")
	pids := kidPids(s.waitReady(2))
	ids := identifyAll(t, pids)
	idle, half := s.idleAndHalf(t)
	s.waitHolder(t, half, pids)

	s.signal(syscall.SIGINT)
	s.waitExit(stopTimeout, "SIGINT, with -grace=60s and a request in progress")
	if st := s.cmd.ProcessState; !st.Exited() {
		t.Errorf("master ended with %v after SIGINT, want an exit of its own", st)
	} else {
		t.Logf("master exited with status %d after SIGINT", st.ExitCode())
	}
	for _, id := range ids {
		if id.alive() {
			t.Errorf("child %d outlived the master's fast stop", id.pid)
		}
	}
	if i := lineIndex(s.log.snapshot(), `msg="killing child past the grace period"`); i >= 0 {
		t.Errorf("a child had to be killed: it did not exit at once: %s", s.log.snapshot()[i])
	}
	// Neither connection got an answer more.
	for name, c := range map[string]*clientConn{"unfinished request": half, "idle": idle} {
		if err := c.waitClosed(ioTimeout); err != nil {
			t.Errorf("%s connection after SIGINT: %v", name, err)
		}
	}
}

// TestGracefulStopQuit: SIGQUIT stops gracefully, as SIGTERM does: the
// listener closes, an idle connection is closed, the request in progress is
// answered in full with Connection: close, and the master exits 0.
func TestGracefulStopQuit(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-grace=8s")
	pids := kidPids(s.waitReady(2))
	idle, half := s.idleAndHalf(t)
	s.waitHolder(t, half, pids)

	s.signal(syscall.SIGQUIT)
	s.waitNoListener(t, "SIGQUIT")
	if c, err := net.DialTimeout("tcp", s.addr, ioTimeout); err == nil {
		c.Close()
		t.Errorf("a new connection after SIGQUIT was accepted")
	}
	if err := idle.waitClosed(ioTimeout); err != nil {
		t.Errorf("idle keep-alive connection during the drain: %v", err)
	}
	if s.hasExited() {
		t.Fatalf("master exited after SIGQUIT with a request in progress; log:\n%s", s.log)
	}
	r, err := half.roundTrip("world")
	if err != nil {
		t.Fatalf("the request in progress at SIGQUIT: %v", err)
	}
	if r.status != 200 || r.body != "helloworld" || !r.close {
		t.Errorf("the request in progress at SIGQUIT: status %d body %q close %v, want 200 %q with Connection: close",
			r.status, r.body, r.close, "helloworld")
	}
	s.waitExit(stopTimeout, "SIGQUIT and the last request")
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("master exited with %v after SIGQUIT, want status 0", s.cmd.ProcessState)
	}
}

// badRequest gets a 400 (whitespace before a header's colon).
const badRequest = "GET / HTTP/1.1\r\nHost : test\r\n\r\n"

// checkRejected sends badRequest on c and checks the start of the staged
// close: the status with Connection: close, then an EOF (the server shut
// its write side).
func checkRejected(t *testing.T, c *clientConn) {
	t.Helper()
	r, err := c.roundTrip(badRequest)
	if err != nil {
		t.Fatalf("bad request: %v", err)
	}
	if r.status != 400 || !r.close {
		t.Fatalf("bad request: status %d close %v, want 400 and Connection: close", r.status, r.close)
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := c.br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the 400: read %d, %v; want EOF (the server's write side shut)", n, err)
	}
}

// lingering sends a bad request on a new connection, checks the start of
// the staged close (checkRejected), sends n bytes more and waits until the
// server has read them and still holds the connection: it lingers.
func (s *server) lingering(t *testing.T, n int) (c *clientConn, peer int) {
	t.Helper()
	c = s.dial(t)
	peer = c.LocalAddr().(*net.TCPAddr).Port
	checkRejected(t, c)
	if _, err := c.Write(bytes.Repeat([]byte("x"), n)); err != nil {
		t.Fatalf("write while the server lingers: %v", err)
	}
	if !pollFor(startTimeout, func() bool { held, unread := s.held(t, peer); return held && unread == 0 }) {
		held, unread := s.held(t, peer)
		t.Fatalf("after the 400 and %d bytes the server's socket is held %v with %d bytes unread: want it held and read (lingering)",
			n, held, unread)
	}
	return c, peer
}

// writeFails writes on c until a write fails (the server reset the
// connection), for up to ioTimeout.
func writeFails(c *clientConn) error {
	var err error
	pollFor(ioTimeout, func() bool {
		c.SetWriteDeadline(time.Now().Add(ioTimeout))
		_, err = c.Write([]byte("more\r\n"))
		return err != nil
	})
	if err == nil {
		return errors.New("every write still goes through")
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("write: %v, want a reset", err)
	}
	return nil
}

// TestLingerTimeout: after a rejection the server reads and discards what
// the client still sends for -linger-timeout, then closes; what the client
// sends after that is answered by a reset.
func TestLingerTimeout(t *testing.T) {
	t.Parallel()
	const linger = 2 * time.Second
	s := startServer(t, "-workers=1", "-linger-timeout="+linger.String())
	s.waitReady(1)
	sent := time.Now()
	// Lingering: what comes is read, the socket is still held.
	c, peer := s.lingering(t, 1<<10)
	// Then the close.
	if !pollFor(linger+startTimeout, func() bool { held, _ := s.held(t, peer); return !held }) {
		t.Fatalf("the server still holds the rejected connection %v after the bad request (-linger-timeout=%v)",
			time.Since(sent).Round(time.Millisecond), linger)
	}
	// A few milliseconds of slack: the child keeps deadlines in wall time,
	// the test measures in monotonic time.
	if took := time.Since(sent); took < linger-5*time.Millisecond {
		t.Errorf("the server closed the rejected connection %v after the bad request, before -linger-timeout=%v", took, linger)
	}
	if err := writeFails(c); err != nil {
		t.Errorf("after the linger: %v", err)
	}
}

// TestLingerCap: the staged close reads at most 64 KiB: a client that sends
// more is cut off then, long before -linger-timeout.
func TestLingerCap(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-linger-timeout=60s")
	s.waitReady(1)
	// 16 KiB is under the cap: read, and the socket still held.
	c, peer := s.lingering(t, 16<<10)
	// 100 KiB more is over it: the server lets go, though the linger
	// timeout is a minute away.
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	c.Write(bytes.Repeat([]byte("y"), 100<<10)) // may fail: the server resets once it stops reading
	if !pollFor(ioTimeout, func() bool { held, _ := s.held(t, peer); return !held }) {
		t.Fatalf("the server still holds a rejected connection that sent 116 KiB after the 400")
	}
	if err := writeFails(c); err != nil {
		t.Errorf("after the cap: %v", err)
	}
}

// TestBodyTimeout: -body-timeout bounds the time between two reads of a
// body, not the whole body: a body that stops coming is cut off, one that
// trickles in for longer than the timeout, a byte at a time, is answered.
func TestBodyTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	s := startServer(t, "-workers=1", "-body-timeout="+timeout.String())
	s.waitReady(1)

	stalled := s.dial(t)
	sent := time.Now()
	if _, err := io.WriteString(stalled, halfRequest); err != nil {
		t.Fatal(err)
	}
	// Closed, never answered.
	if err := stalled.waitClosed(timeout + ioTimeout); err != nil {
		t.Fatalf("a body that stopped coming: %v", err)
	}
	if took := time.Since(sent); took < timeout-5*time.Millisecond {
		t.Errorf("a body that stopped coming was cut off %v after its last byte, before -body-timeout=%v", took, timeout)
	}

	const body, gap = "trickled body", 400 * time.Millisecond
	trickle := s.dial(t)
	trickle.SetDeadline(time.Now().Add(time.Duration(len(body))*gap + ioTimeout))
	begin := time.Now()
	if _, err := fmt.Fprintf(trickle, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n", len(body)); err != nil {
		t.Fatal(err)
	}
	for i := range len(body) {
		time.Sleep(gap) // the client's pace, well under the timeout
		if _, err := io.WriteString(trickle, body[i:i+1]); err != nil {
			t.Fatalf("byte %d of the trickled body: %v", i, err)
		}
	}
	r, err := trickle.readResponse()
	if err != nil || r.status != 200 || r.body != body {
		t.Fatalf("a body trickled in over %v (-body-timeout=%v): %+v, %v", time.Since(begin).Round(time.Millisecond), timeout, r, err)
	}
}

// bigEcho is a POST /echo of n bytes, a pattern no shifted or dropped
// piece of would still match.
func bigEcho(n int) (request, body []byte) {
	body = make([]byte, n)
	for i := range body {
		body[i] = byte(i*7 + i>>10)
	}
	head := fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n", n)
	return append([]byte(head), body...), body
}

// dialBuf dials with a small receive buffer (rcvbufDialer).
func dialBuf(t *testing.T, addr string, rcvbuf int) *clientConn {
	t.Helper()
	c, err := rcvbufDialer(rcvbuf).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &clientConn{Conn: c, br: bufio.NewReaderSize(c, 64<<10)}
}

// pacedReader reads at most piece bytes per read, pausing between reads.
type pacedReader struct {
	r     io.Reader
	piece int
	pause time.Duration
}

func (p *pacedReader) Read(b []byte) (int, error) {
	time.Sleep(p.pause)
	return p.r.Read(b[:min(len(b), p.piece)])
}

// TestWriteTimeout: -write-timeout bounds the time between two writes
// that make progress, not the whole response: a client that stops reading
// an 8 MiB answer is cut off, one that reads it slowly but steadily for
// longer than the timeout gets all of it.
func TestWriteTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	s := startServer(t, "-workers=1", "-write-timeout="+timeout.String(), "-max-body=16777216")
	s.waitReady(1)
	request, body := bigEcho(8 << 20)

	// A client that never reads: the answer stalls, then the server closes.
	stalled := dialBuf(t, s.addr, 4<<10)
	peer := stalled.LocalAddr().(*net.TCPAddr).Port
	before := time.Now()
	stalled.SetDeadline(time.Now().Add(ioTimeout + timeout))
	if _, err := stalled.Write(request); err != nil {
		t.Fatalf("sending the request: %v", err)
	}
	if !pollFor(timeout+startTimeout, func() bool { held, _ := s.held(t, peer); return !held }) {
		t.Fatalf("the server still holds a connection whose client has not read for %v (-write-timeout=%v)",
			time.Since(before).Round(time.Millisecond), timeout)
	}
	if took := time.Since(before); took < timeout-5*time.Millisecond {
		t.Errorf("the server gave up on a stalled client %v after its request, before -write-timeout=%v", took, timeout)
	}
	got, _ := io.ReadAll(stalled.br) // what the kernel still had: then EOF or a reset
	if len(got) >= len(body) {
		t.Errorf("the stalled client got %d bytes: the whole answer, not cut off", len(got))
	}
	t.Logf("the stalled client got %d bytes of the %d-byte answer", len(got), len(body))

	// A client that reads at most 64 KiB every 40 ms: the transfer lasts
	// longer than the timeout, but every write makes progress.
	steady := dialBuf(t, s.addr, 64<<10)
	steady.SetDeadline(time.Now().Add(ioTimeout + 4*timeout))
	begin := time.Now()
	if _, err := steady.Write(request); err != nil {
		t.Fatalf("sending the request: %v", err)
	}
	r, err := readResponse(bufio.NewReaderSize(&pacedReader{r: steady.Conn, piece: 64 << 10, pause: 40 * time.Millisecond}, 64<<10))
	took := time.Since(begin)
	if err != nil || r.status != 200 || r.body != string(body) {
		status, n := 0, 0
		if r != nil {
			status, n = r.status, len(r.body)
		}
		t.Fatalf("the steady client after %v: status %d, %d of %d bytes (intact: %v), %v", took.Round(time.Millisecond),
			status, n, len(body), r != nil && r.body == string(body), err)
	}
	if took < timeout {
		t.Fatalf("the steady client read the answer in %v, within -write-timeout=%v: the case shows nothing", took, timeout)
	}
	t.Logf("the steady client read the %d-byte answer in %v", len(body), took.Round(time.Millisecond))
}

// TestFatalChildNotReplaced: a child that exits with status 2 is fatal: its
// slot is not respawned, while the other slot serves on.
func TestFatalChildNotReplaced(t *testing.T) {
	t.Parallel()
	s := crashServer(t, 2, "0", "-workers=2")
	var fatal, serving kidInfo
	if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		for _, k := range parseKids(lines, reReady) {
			if k.slot == 1 {
				serving = k
			}
		}
		for _, k := range parseKids(lines, reSpawned) {
			if k.slot == 0 && lineIndex(lines, fmt.Sprintf(" pid=%d ", k.pid), "status=2") >= 0 {
				fatal = k
			}
		}
		return fatal.pid != 0 && serving.pid != 0
	}) {
		t.Fatalf("no exit with status 2 of slot 0 and no ready slot 1 within %v; log:\n%s", startTimeout, s.log)
	}
	// The backoff of an ordinary crash would respawn the slot within 100
	// ms, and again and again: two seconds show none.
	if s.log.waitFor(2*time.Second, s.exited, func(lines []string) bool {
		return len(slices.DeleteFunc(parseKids(lines, reSpawned), func(k kidInfo) bool { return k.slot != 0 })) > 1
	}) {
		t.Fatalf("slot 0 was respawned after its child exited with status 2; log:\n%s", s.log)
	}
	if s.hasExited() {
		t.Fatalf("master exited with one slot still serving: %v; log:\n%s", s.cmd.ProcessState, s.log)
	}
	if got := s.children(); !slices.Equal(got, []int{serving.pid}) {
		t.Errorf("master's children %v, want only slot 1's %d", got, serving.pid)
	}
	for i := range 4 {
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("request %d with slot 0 failed fatally: %+v", i, r)
		}
	}
}

// TestAllChildrenFatal: when every child has failed fatally the master
// says so and stops, exiting 1 (a runtime failure).
func TestAllChildrenFatal(t *testing.T) {
	t.Parallel()
	s := crashServer(t, 2, "", "-workers=2")
	s.waitExit(startTimeout, "every child exited with status 2")
	if code := s.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("master exited with %v when every child failed fatally, want status 1", s.cmd.ProcessState)
	}
	lines := s.log.snapshot()
	if lineIndex(lines, "every child failed fatally") < 0 {
		t.Errorf("the master did not say that every child failed fatally; log:\n%s", strings.Join(lines, "\n"))
	}
	if n := len(parseKids(lines, reSpawned)); n != 2 {
		t.Errorf("%d children spawned, want 2 (none respawned); log:\n%s", n, strings.Join(lines, "\n"))
	}
}

// TestReloadRefusesListenAndMode: -listen and -mode cannot change on a
// reload. A config file that changes either is refused with a log line,
// and the same children serve on the same socket; a change of anything
// else in the same file then reloads.
func TestReloadRefusesListenAndMode(t *testing.T) {
	t.Parallel()
	conf := writeConfig(t, "listen = 127.0.0.1:0\nworkers = 1\n")
	// -listen must come from the file: the command line would win over it.
	s := startServerWith(t, func(c *exec.Cmd) {
		c.Args = slices.DeleteFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "-listen=") })
	}, "-config="+conf)
	kids := sortedPids(s.waitReady(1))

	rejected := 0
	for _, tc := range []struct{ what, conf string }{
		{"listen", "listen = 127.0.0.2:0\nworkers = 1\n"},
		{"mode", "listen = 127.0.0.1:0\nmode = reuseport\nworkers = 1\n"},
		// What else the master runs with is refused too, not ignored.
		{"-admin", "listen = 127.0.0.1:0\nworkers = 1\nadmin = 127.0.0.1:0\n"},
		{"-log-json", "listen = 127.0.0.1:0\nworkers = 1\nlog-json = true\n"},
		{"-backlog", "listen = 127.0.0.1:0\nworkers = 1\nbacklog = 16\n"},
		{"-pidfile", "listen = 127.0.0.1:0\nworkers = 1\npidfile = " + filepath.Join(t.TempDir(), "other.pid") + "\n"},
	} {
		rewrite(t, conf, tc.conf)
		s.signal(syscall.SIGHUP)
		var line string
		if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
			n := 0
			for _, l := range lines {
				if strings.Contains(l, `msg="reload rejected`) {
					if n++; n > rejected {
						line = l
						return true
					}
				}
			}
			return false
		}) {
			t.Fatalf("a reload that changes %s was not refused; log:\n%s", tc.what, s.log)
		}
		rejected++
		if !strings.Contains(line, tc.what) {
			t.Errorf("the refusal of a %s change does not name it: %s", tc.what, line)
		}
		if got := s.children(); !slices.Equal(got, kids) {
			t.Errorf("children after a refused %s change %v, want the same %v", tc.what, got, kids)
		}
		if l, ok := s.listensAlone(t); !ok {
			t.Errorf("after a refused %s change, listening sockets on port %d: %+v, want the master's alone", tc.what, s.port, l)
		}
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("request after a refused %s change: %+v", tc.what, r)
		}
	}
	for _, l := range s.log.snapshot() {
		if reReloadBegun.MatchString(l) {
			t.Errorf("a refused reload began a generation: %s", l)
		}
	}

	// The same file with only the workers changed: a reload.
	rewrite(t, conf, "listen = 127.0.0.1:0\nworkers = 2\n")
	s.signal(syscall.SIGHUP)
	if !s.waitGen(reReloadDone, 1, startTimeout) {
		t.Fatalf("a reload with listen and mode unchanged was not done; log:\n%s", s.log)
	}
	if n := len(s.ready(1)); n != 2 {
		t.Errorf("generation 1 has %d ready children, want 2", n)
	}
}

// TestUserRefusedInReuseport: in reuseport mode the children bind the port
// themselves and only the same user may join a SO_REUSEPORT group, so
// -user is refused there: exit status 2, naming -user, from the command
// line or the config file.
func TestUserRefusedInReuseport(t *testing.T) {
	t.Parallel()
	conf := writeConfig(t, "mode = reuseport\nuser = nobody\n")
	for name, args := range map[string][]string{
		"flags":  {"-mode=reuseport", "-user=nobody"},
		"config": {"-config=" + conf},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			all := append([]string{"-listen=127.0.0.1:0", "-workers=1"}, args...)
			code, stderr := runToExit(t, all...)
			if code != 2 || !strings.Contains(stderr, "-user") {
				t.Errorf("procpool %v: exit status %d, want 2 and a message naming -user; stderr:\n%s", all, code, stderr)
			}
		})
	}
}

// TestLogJSON: with -log-json every line of the lifecycle log is a JSON
// object with the time, the level and the message, and the events carry
// their fields as JSON values.
func TestLogJSON(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-log-json")

	type entry map[string]any
	parse := func(lines []string) ([]entry, error) {
		var l []entry
		for _, line := range lines {
			var e entry
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				return l, fmt.Errorf("not a JSON object: %q: %v", line, err)
			}
			l = append(l, e)
		}
		return l, nil
	}
	count := func(es []entry, msg string) int {
		n := 0
		for _, e := range es {
			if e["msg"] == msg {
				n++
			}
		}
		return n
	}
	var entries []entry
	var parseErr error
	if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		entries, parseErr = parse(lines)
		return parseErr != nil || count(entries, "child ready") >= 2
	}) || parseErr != nil {
		t.Fatalf("no two children ready in JSON lines within %v (%v); log:\n%s", startTimeout, parseErr, s.log)
	}
	var started entry
	for _, e := range entries {
		if e["msg"] == "master started" {
			started = e
		}
	}
	if started == nil {
		t.Fatalf("no master started entry; log:\n%s", s.log)
	}
	if pid, ok := started["pid"].(float64); !ok || int(pid) != s.pid {
		t.Errorf("master started: pid %v (%T), want the number %d", started["pid"], started["pid"], s.pid)
	}
	addr, _ := started["listen"].(string)
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		t.Fatalf("master started: listen %q, want host:port with the port chosen", addr)
	}
	if addr != s.addr {
		t.Errorf("master started: listen %q, want %q", addr, s.addr)
	}
	if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
		t.Errorf("GET /: %+v", r)
	}

	// A reload and a stop, in JSON too.
	s.signal(syscall.SIGHUP)
	if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		entries, parseErr = parse(lines)
		return parseErr != nil || count(entries, "reload done") == 1
	}) || parseErr != nil {
		t.Fatalf("no reload done in JSON lines (%v); log:\n%s", parseErr, s.log)
	}
	s.signal(syscall.SIGTERM)
	s.waitExit(stopTimeout, "SIGTERM")
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("master exited with %v after SIGTERM, want status 0", s.cmd.ProcessState)
	}
	entries, parseErr = parse(s.log.snapshot())
	if parseErr != nil {
		t.Fatal(parseErr)
	}
	for i, e := range entries {
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(e["time"])); err != nil {
			t.Errorf("line %d: time %v: %v", i+1, e["time"], err)
		}
		if lv, _ := e["level"].(string); lv == "" {
			t.Errorf("line %d has no level: %v", i+1, e)
		}
	}
	for _, msg := range []string{"master started", "child spawned", "child ready", "reload begun", "reload done", "graceful stop", "master stopped"} {
		if count(entries, msg) == 0 {
			t.Errorf("no %q entry; log:\n%s", msg, s.log)
		}
	}
	for _, e := range entries {
		if e["msg"] == "child spawned" {
			for _, f := range []string{"pid", "slot", "gen"} {
				if _, ok := e[f].(float64); !ok {
					t.Errorf("child spawned: %s is %v (%T), want a number", f, e[f], e[f])
				}
			}
		}
	}
}
