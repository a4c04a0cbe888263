package main

// Behind a load balancer, in a container: readiness and the shutdown delay
// on -admin, PROXY protocol headers (written by hand and by HAProxy), the
// Unix-socket listener, and the default number of workers under a CPU mask.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dialFrom connects to addr from the loopback address from (any of
// 127.0.0.0/8 works on Linux), with an I/O deadline.
func dialFrom(t *testing.T, addr, from string) *clientConn {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	return &clientConn{Conn: c, br: bufio.NewReader(c)}
}

const getClose = "GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"

// /readyz answers 200 once the children are ready and 503 from the moment a
// stop begins; with -shutdown-delay the server goes on accepting and
// answering for the delay, every answer with Connection: close, and only
// then stops gracefully. /healthz answers 200 throughout.
func TestShutdownDelay(t *testing.T) { inBothModes(t, testShutdownDelay) }

// inBothModes runs test once per mode, in parallel.
func inBothModes(t *testing.T, test func(*testing.T, string)) {
	for _, mode := range []string{"fdpass", "reuseport"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			test(t, mode)
		})
	}
}

func testShutdownDelay(t *testing.T, mode string) {
	const delay = 2 * time.Second
	s := startServer(t, "-workers=2", "-mode="+mode, "-admin=127.0.0.1:0", "-shutdown-delay="+delay.String())
	admin := adminAddr(t, s)
	s.waitReady(2)
	waitAdminStatus(t, admin, "/readyz", 200)
	waitAdminStatus(t, admin, "/healthz", 200)

	kept := s.dial(t)
	if r, err := kept.roundTrip("GET / HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil || r.close {
		t.Fatalf("keep-alive request before the stop: %+v, %v", r, err)
	}
	s.signal(syscall.SIGTERM)
	waitAdminStatus(t, admin, "/readyz", 503)
	sent := time.Now()
	waitLog(t, s, "shutdown delay")

	// During the delay: the open connection is answered and told to close,
	// a new one is accepted and answered, the master is healthy.
	if r, err := kept.roundTrip("GET / HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil || r.status != 200 || r.body != "Hello World" || !r.close {
		t.Fatalf("keep-alive request during the delay: %+v, %v; want Hello World with Connection: close", r, err)
	}
	if err := kept.waitClosed(ioTimeout); err != nil {
		t.Errorf("the connection after its Connection: close: %v", err)
	}
	fresh := s.dial(t)
	if r, err := fresh.roundTrip("GET / HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil || r.body != "Hello World" || !r.close {
		t.Fatalf("new connection during the delay: %+v, %v", r, err)
	}
	if time.Since(sent) < delay {
		if code, _, err := adminStatus(admin, "/healthz"); code != 200 {
			t.Errorf("/healthz during the delay: %d %v", code, err)
		}
		if code, _, _ := adminStatus(admin, "/readyz"); code != 503 {
			t.Errorf("/readyz during the delay: %d", code)
		}
	}

	s.waitExit(delay+stopTimeout, "SIGTERM with -shutdown-delay")
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("master exited %d, want 0", code)
	}
	lines := s.log.snapshot()
	began, stopped := firstTime(t, lines, "shutdown delay:"), firstTime(t, lines, `msg="graceful stop"`)
	if began.IsZero() || stopped.IsZero() || stopped.Sub(began) < delay-50*time.Millisecond {
		t.Errorf("shutdown delay logged at %v, graceful stop at %v: want the stop %v after; log:\n%s", began, stopped, delay, s.log)
	}
}

// Without a delay /readyz is 503 as soon as the graceful stop begins, while
// a request in progress keeps the master up.
func TestReadyzDuringStop(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-admin=127.0.0.1:0")
	admin := adminAddr(t, s)
	s.waitReady(1)
	waitAdminStatus(t, admin, "/readyz", 200)
	_, half := s.idleAndHalf(t)
	s.signal(syscall.SIGQUIT)
	waitLog(t, s, "graceful stop")
	if s.hasExited() {
		t.Fatal("master exited with a request in progress")
	}
	code, body, err := adminStatus(admin, "/readyz")
	if code != 503 || err != nil {
		t.Errorf("/readyz during the graceful stop: %d %q %v, want 503", code, body, err)
	}
	if code, _, err := adminStatus(admin, "/healthz"); code != 200 {
		t.Errorf("/healthz during the graceful stop: %d %v", code, err)
	}
	half.Close()
}

// PROXY headers written by hand: the balancer's (v1 and v2) give the access
// log the client's address; one from an address -proxy-from does not name
// closes the connection unanswered; a plain request from there is served
// under its own address.
func TestProxyProtocol(t *testing.T) { inBothModes(t, testProxyProtocol) }

func testProxyProtocol(t *testing.T, mode string) {
	logPath := filepath.Join(t.TempDir(), "access.log")
	s := startServer(t, "-workers=2", "-mode="+mode, "-proxy-protocol", "-proxy-from=127.0.0.2/32,10.9.9.9", "-access-log="+logPath)
	s.waitReady(2)

	lb := dialFrom(t, s.addr, "127.0.0.2")
	if r, err := lb.roundTrip("PROXY TCP4 198.51.100.7 127.0.0.1 51000 80\r\n" + getClose); err != nil || r.body != "Hello World" {
		t.Fatalf("v1 from the balancer: %+v, %v", r, err)
	}
	v2 := "\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + string(net.ParseIP("2001:db8::9").To16()) + string(net.ParseIP("::1").To16()) + "\xc3\x50\x00\x50"
	lb6 := dialFrom(t, s.addr, "127.0.0.2")
	if r, err := lb6.roundTrip(v2 + getClose); err != nil || r.body != "Hello World" {
		t.Fatalf("v2 from the balancer: %+v, %v", r, err)
	}
	garbled := dialFrom(t, s.addr, "127.0.0.2")
	garbled.Write([]byte("PROXY TCP4 198.51.100.9 127.0.0.1 51000\r\n" + getClose))
	if err := garbled.waitClosed(ioTimeout); err != nil {
		t.Errorf("a malformed header from the balancer: %v", err)
	}

	forged := dialFrom(t, s.addr, "127.0.0.3")
	forged.Write([]byte("PROXY TCP4 198.51.100.8 127.0.0.1 51000 80\r\n" + getClose))
	if err := forged.waitClosed(ioTimeout); err != nil {
		t.Errorf("a header from 127.0.0.3, not in -proxy-from: %v", err)
	}
	direct := dialFrom(t, s.addr, "127.0.0.3")
	if r, err := direct.roundTrip(getClose); err != nil || r.body != "Hello World" {
		t.Fatalf("a plain request from 127.0.0.3: %+v, %v", r, err)
	}

	want := []string{"198.51.100.7", "2001:db8::9", "127.0.0.3"}
	got, ok := loggedClients(logPath, ``, len(want))
	if !ok {
		t.Fatalf("access log clients %q, want %q", got, want)
	}
	if strings.Join(sorted(got), " ") != strings.Join(sorted(want), " ") {
		t.Errorf("access log clients %q, want %q (and never 198.51.100.8 or 9)", got, want)
	}
}

func sorted(l []string) []string {
	l = slices.Clone(l)
	slices.Sort(l)
	return l
}

// freePort is a loopback TCP port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHAProxy runs haproxy in the foreground with cfg, stopped at cleanup,
// and waits until it accepts on every port in ports.
func startHAProxy(t *testing.T, cfg string, ports ...int) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(debianTool(t, "haproxy", "/usr/sbin", "haproxy"), "-db", "-f", path)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})
	for _, p := range ports {
		addr := "127.0.0.1:" + strconv.Itoa(p)
		if !pollFor(startTimeout, func() bool {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		}) {
			t.Fatalf("haproxy does not listen on %s; output:\n%s", addr, out.String())
		}
	}
}

// Through HAProxy, PROXY v1 and v2: the access log shows the client's own
// address (127.0.0.9), not the balancer's, and HAProxy's health check of
// /readyz on the admin listener finds the server up.
func TestBehindHAProxy(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	s := startServer(t, "-workers=2", "-proxy-protocol", "-proxy-from=127.0.0.1", "-admin=127.0.0.1:0", "-access-log="+logPath)
	admin := adminAddr(t, s)
	_, adminPort, _ := net.SplitHostPort(admin)
	s.waitReady(2)
	waitAdminStatus(t, admin, "/readyz", 200)

	v1, v2 := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`global
	maxconn 256
defaults
	mode http
	timeout connect 2s
	timeout client 10s
	timeout server 10s
frontend v1
	bind 127.0.0.1:%d
	default_backend v1
frontend v2
	bind 127.0.0.1:%d
	default_backend v2
backend v1
	option httpchk GET /readyz
	server s1 %s send-proxy check port %s inter 200ms
backend v2
	option httpchk GET /readyz
	server s1 %s send-proxy-v2 check port %s inter 200ms
`, v1, v2, s.addr, adminPort, s.addr, adminPort)
	startHAProxy(t, cfg, v1, v2)

	for i, port := range []int{v1, v2, v1, v2} {
		c := dialFrom(t, "127.0.0.1:"+strconv.Itoa(port), "127.0.0.9")
		r, err := c.roundTrip("GET /?n=" + strconv.Itoa(i) + " HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
		if err != nil || r.status != 200 || r.body != "Hello World" {
			t.Fatalf("GET through haproxy port %d: %+v, %v", port, r, err)
		}
	}
	got, _ := loggedClients(logPath, `\S+ \S+ "GET /\?n=\d`, 4)
	if len(got) != 4 || strings.Count(strings.Join(got, " "), "127.0.0.9") != 4 {
		t.Errorf("access log clients behind haproxy: %q, want 127.0.0.9 four times", got)
	}
	// HAProxy's own checks reached /readyz (they bypass the PROXY header).
	if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "/readyz") {
		t.Errorf("a health check reached the children: %s", b)
	}
}

// -listen unix:PATH: the socket gets -listen-mode, answers curl
// --unix-socket, is left for the next start to replace, and a file that is
// not a socket is never replaced.
func TestUnixListener(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "procpool.sock")
	start := func(extra ...string) *server {
		t.Helper()
		args := append([]string{"-listen=unix:" + sock, "-workers=2", "-grace=3s"}, extra...)
		cmd := exec.Command(binPath, args...)
		cmd.Env = serverEnv()
		s := launch(t, cmd)
		var started logStart
		if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
			for _, line := range lines {
				if started = parseStart(line); started.pid != 0 {
					return true
				}
			}
			return false
		}) {
			t.Fatalf("master %v did not start; log:\n%s", args, s.log)
		}
		if started.listen != "unix:"+sock {
			t.Fatalf("master logged listen=%q, want unix:%s", started.listen, sock)
		}
		s.waitReady(2)
		return s
	}
	s := start("-listen-mode=0600")
	var st syscall.Stat_t
	if err := syscall.Stat(sock, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Mode&0o777 != 0o600 {
		t.Fatalf("%s: mode %o, %v; want a socket with mode 0600", sock, st.Mode, err)
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, curl, "-sS", "--unix-socket", sock, "http://procpool/").CombinedOutput()
		if err != nil || string(out) != "Hello World" {
			t.Errorf("curl --unix-socket: %q, %v", out, err)
		}
	} else {
		t.Log("no curl: the Go client only")
	}
	client := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	for i := 0; i < 4; i++ {
		resp, err := client.Get("http://procpool/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "Hello World" {
			t.Fatalf("GET over the Unix socket: %d %q", resp.StatusCode, b)
		}
	}
	client.CloseIdleConnections()

	// The socket file outlives a stop; the next start replaces it.
	s.signal(syscall.SIGTERM)
	s.waitExit(stopTimeout, "SIGTERM")
	if !fileExists(sock) {
		t.Fatalf("%s removed at the stop", sock)
	}
	start()
	if out, err := exec.Command("curl", "-sS", "--unix-socket", sock, "http://procpool/").CombinedOutput(); err == nil && string(out) != "Hello World" {
		t.Errorf("curl after a restart: %q", out)
	}

	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("keep me"), 0o644)
	code, stderr := runToExit(t, "-listen=unix:"+plain, "-workers=1")
	if b, _ := os.ReadFile(plain); code == 0 || string(b) != "keep me" || !strings.Contains(stderr, "not a socket") {
		t.Errorf("-listen on a regular file: exit %d, stderr %q, file %q", code, stderr, b)
	}
}

// reuseport cannot serve a Unix socket: refused at start with one line.
func TestUnixListenerNotInReuseport(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "procpool.sock")
	code, stderr := runToExit(t, "-listen=unix:"+sock, "-mode=reuseport")
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "reuseport") || !strings.Contains(lines[0], "fdpass") {
		t.Errorf("-listen unix: -mode reuseport: exit %d, stderr %q; want 2 and one line naming the modes", code, stderr)
	}
	if fileExists(sock) {
		t.Errorf("%s created by a start that was refused", sock)
	}
}

// Without -workers the master starts one child per CPU it may use: under
// taskset -c 0 one, as with GOMAXPROCS=1 (what a CPU quota of one CPU
// gives a Go program), not one per CPU of the machine.
func TestDefaultWorkersFollowTheContainer(t *testing.T) {
	t.Parallel()
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		t.Fatal("taskset (util-linux) not found")
	}
	for _, c := range []struct {
		name   string
		adjust func(*exec.Cmd)
	}{
		{"taskset -c 0", func(cmd *exec.Cmd) {
			cmd.Args = append([]string{taskset, "-c", "0", cmd.Path}, cmd.Args[1:]...)
			cmd.Path = taskset
		}},
		{"GOMAXPROCS=1", func(cmd *exec.Cmd) { cmd.Env = append(cmd.Env, "GOMAXPROCS=1") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startServerWith(t, c.adjust)
			kids := s.waitReady(1)
			if i := lineIndex(s.log.snapshot(), "master started", "workers=1"); i < 0 {
				t.Errorf("master did not start with workers=1; log:\n%s", s.log)
			}
			// A second child would have been spawned with the first.
			if pids := s.children(); len(pids) != 1 || len(kids) != 1 {
				t.Errorf("children %v, want one", pids)
			}
			if r := s.get(t, "/"); r.body != "Hello World" {
				t.Errorf("GET /: %q", r.body)
			}
		})
	}
}

// The request a child is busy with shows, in /status, the client a
// balancer's PROXY header named.
func TestStatusShowsProxyClient(t *testing.T) {
	t.Parallel()
	bin := variantBin(t, "procpool_sleeptest")
	s := startServerWith(t, useBin(bin), "-workers=1", "-proxy-protocol", "-proxy-from=127.0.0.2", "-admin=127.0.0.1:0")
	admin := adminAddr(t, s)
	s.waitReady(1)
	c := dialFrom(t, s.addr, "127.0.0.2")
	if _, err := c.Write([]byte("PROXY TCP4 198.51.100.7 127.0.0.1 40001 80\r\nGET /sleep/1500 HTTP/1.1\r\nHost: lb\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	var seen string
	found := pollFor(ioTimeout, func() bool {
		// getStatus checks the names too: here with a request running.
		for _, k := range getStatus(t, admin).Children {
			if k.Request != nil && k.Request.Path == "/sleep/1500" {
				seen = k.Request.Client
				return true
			}
		}
		return false
	})
	if !found || seen != "198.51.100.7:40001" {
		t.Errorf("/status request client %q (found %v), want 198.51.100.7:40001", seen, found)
	}
	if r, err := c.readResponse(); err != nil || r.body != "slept\n" {
		t.Errorf("the slow request: %+v, %v", r, err)
	}
}

// A reload hands a balancer's keep-alive connections to the new children
// with their client: the next request on each is logged under the address
// its PROXY header gave, not the balancer's.
func TestReloadKeepsProxyClient(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	s := startServer(t, "-workers=2", "-affinity=false", "-proxy-protocol", "-proxy-from=127.0.0.2", "-access-log="+logPath)
	s.waitReady(2)
	headers := map[string]string{
		"198.51.100.7": "PROXY TCP4 198.51.100.7 127.0.0.1 40001 80\r\n",
		"2001:db8::9": "\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + string(net.ParseIP("2001:db8::9").To16()) +
			string(net.ParseIP("::1").To16()) + "\xc3\x50\x00\x50",
	}
	conns := map[string]*clientConn{}
	for client, h := range headers {
		c := dialFrom(t, s.addr, "127.0.0.2")
		if r, err := c.roundTrip(h + "GET /?before HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil || r.status != 200 {
			t.Fatalf("%s before the reload: %+v, %v", client, r, err)
		}
		conns[client] = c
	}
	reloadAndWait(t, s, 0)
	for client, c := range conns {
		c.SetDeadline(time.Now().Add(ioTimeout))
		if r, err := c.roundTrip("GET /?after HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"); err != nil || r.status != 200 {
			t.Fatalf("%s after the reload: %+v, %v (the connection did not survive the hand-back)", client, r, err)
		}
	}
	got, _ := loggedClients(logPath, `\S+ \S+ "GET /\?after `, 2)
	if strings.Join(sorted(got), " ") != "198.51.100.7 2001:db8::9" {
		b, _ := os.ReadFile(logPath)
		t.Errorf("clients of the requests after the reload: %q, want 198.51.100.7 and 2001:db8::9; access log:\n%s", got, b)
	}
}

// loggedClients waits until the access log at path holds n lines whose text
// after "CLIENT - - " matches rest, and returns their clients (what it has
// when the wait runs out, with ok false).
func loggedClients(path, rest string, n int) (clients []string, ok bool) {
	re := regexp.MustCompile(`(?m)^(\S+) - - ` + rest)
	ok = pollFor(ioTimeout, func() bool {
		b, _ := os.ReadFile(path)
		clients = clients[:0]
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			clients = append(clients, m[1])
		}
		return len(clients) >= n
	})
	return clients, ok
}
