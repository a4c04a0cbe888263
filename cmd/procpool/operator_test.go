package main

// What an operator meets: a start that cannot serve fails with the reason,
// -s for scripts (waits, verdicts, broken configs), names in ps, readable
// JSON durations, and the files and sockets procpool refuses to touch.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartCannotServe: what would make every child fail is checked before
// any is forked, and the start fails with one line naming the file, in the
// foreground, with -log (on the terminal and in the log) and with -daemon.
func TestStartCannotServe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing", "a.log")
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	notSocket := filepath.Join(dir, "admin.sock")
	if err := os.WriteFile(notSocket, []byte("not a socket\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	liveSocket := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", liveSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type test struct {
		name string
		args []string
		want string
	}
	tests := []test{
		{"access log in a missing dir", []string{"-access-log=" + missing},
			"-access-log: open " + missing + ": no such file or directory"},
		{"access log is a link", []string{"-access-log=" + link},
			"-access-log: " + link + " is a symbolic link; refusing to follow it"},
		{"log is a link", []string{"-log=" + link}, "-log: " + link + " is a symbolic link; refusing to follow it"},
		{"pidfile is a link", []string{"-pidfile=" + link}, "pidfile " + link + " is a symbolic link; refusing to follow it"},
		{"admin path is a file", []string{"-admin=unix:" + notSocket},
			"-admin unix:" + notSocket + ": " + notSocket + " exists and is not a socket; refusing to remove it"},
		{"admin socket in use", []string{"-admin=unix:" + liveSocket},
			"-admin unix:" + liveSocket + ": " + liveSocket + ": a process already listens on this socket"},
	}
	if _, err := nobody(); err == nil {
		// The test's directory is root's, mode 0700: nobody cannot write there.
		tests = append(tests, test{"access log the user cannot write", []string{"-user=nobody", "-access-log=" + filepath.Join(dir, "a.log")},
			"-access-log: open " + filepath.Join(dir, "a.log") + ": permission denied (as user nobody)"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-listen=127.0.0.1:0", "-workers=1"}, tt.args...)
			code, stderr := runToExit(t, args...)
			if want := "procpool: " + tt.want + "\n"; code != 1 || stderr != want {
				t.Errorf("procpool %v:\n got status %d, stderr %q\nwant status 1, stderr %q", args, code, stderr, want)
			}
		})
	}
	t.Run("with -log", func(t *testing.T) {
		logPath := filepath.Join(t.TempDir(), "procpool.log")
		code, stderr := runToExit(t, "-listen=127.0.0.1:0", "-workers=1", "-log="+logPath, "-access-log="+missing)
		want := "procpool: -access-log: open " + missing + ": no such file or directory\n"
		if code != 1 || stderr != want {
			t.Errorf("status %d, stderr %q; want 1 and %q", code, stderr, want)
		}
		if b, _ := os.ReadFile(logPath); string(b) != want {
			t.Errorf("log holds %q, want %q", b, want)
		}
	})
	t.Run("daemon", func(t *testing.T) {
		d := newDaemon(t)
		code, stderr := d.start("-workers=1", "-access-log="+missing)
		want := "procpool: -access-log: open " + missing + ": no such file or directory\n"
		if code != 1 || stderr != want {
			t.Errorf("-daemon: status %d, stderr %q; want 1 and %q", code, stderr, want)
		}
		if pid := pidfilePid(d.pidfile); pid != 0 {
			t.Errorf("pidfile names a running master %d", pid)
		}
	})
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("the links' target now holds %q", b)
	}
	if b, _ := os.ReadFile(notSocket); string(b) != "not a socket\n" {
		t.Errorf("the file at the admin path now holds %q", b)
	}
}

// TestChildrenFailFatally: when every child exits 2 (here the access log's
// directory vanished and a killed child's replacement cannot open it), the
// master stops and exits 1, saying so in its last line.
func TestChildrenFailFatally(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "logs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	access := filepath.Join(dir, "access.log")
	s := startServer(t, "-workers=1", "-access-log="+access)
	kids := s.waitReady(1)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(kids[0].pid, syscall.SIGKILL)
	select {
	case <-s.exited:
	case <-time.After(startTimeout):
		t.Fatalf("master still running %v after its only slot failed fatally; log:\n%s", startTimeout, s.log)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("master exited with %v, want status 1", s.cmd.ProcessState)
	}
	// The reader has the last lines once the pipe closes.
	var lines []string
	pollFor(2*time.Second, func() bool {
		lines = s.log.snapshot()
		return len(lines) > 0 && strings.HasPrefix(lines[len(lines)-1], "procpool: ")
	})
	want := "procpool: every child failed fatally (exit status 2), so the master stopped; their errors are above"
	if len(lines) == 0 || lines[len(lines)-1] != want {
		t.Errorf("last line of stderr %q, want %q", lines[len(lines)-1:], want)
	}
	childErr := []string{`msg="open -access-log"`, " slot=0 ", `err="open ` + access + `: no such file or directory"`}
	if lineIndex(lines, childErr...) < 0 {
		t.Errorf("no line with %q in stderr:\n%s", childErr, s.log)
	}
}

// TestControlScripting: `procpool -s` as scripts use it. stop waits until
// the master has exited, so a start can follow at once; reload reports the
// master's verdict; a config broken elsewhere still lets -s find the master
// through the pidfile it names.
func TestControlScripting(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	conf := writeConfig(t, fmt.Sprintf("pidfile = %s\nworkers = 1\ngrace = 2s\n", d.pidfile))
	start := func() {
		t.Helper()
		code, stderr := runToExit(t, "-daemon", "-listen=127.0.0.1:0", "-config="+conf, "-log="+d.logPath)
		if code != 0 {
			t.Fatalf("-daemon exited %d: %s", code, stderr)
		}
	}
	start()
	d.learn()
	first := d.master
	if first.pid == 0 {
		t.Fatalf("no master in %s", d.pidfile)
	}

	ctl := func(args ...string) (int, string) {
		t.Helper()
		return runToExit(t, append([]string{"-config=" + conf}, args...)...)
	}
	if code, stderr := ctl("-s", "reload"); code != 0 || stderr != "" {
		t.Errorf("-s reload: status %d, stderr %q; want 0 and nothing", code, stderr)
	}
	if o := readReloadFile(t, d.pidfile); o != fmt.Sprintf("%d 1 ok generation 1\n", first.pid) {
		t.Errorf("reload file holds %q after a good reload", o)
	}
	rewrite(t, conf, fmt.Sprintf("pidfile = %s\nworkers = 1\nworkers = banana\nfrobnicate = yes\n", d.pidfile))
	want := "procpool: reload rejected: config " + conf + ` line 3: workers: want a whole number, got "banana"` + "\n"
	if code, stderr := ctl("-s", "reload"); code != 1 || stderr != want {
		t.Errorf("-s reload of a broken config: status %d, stderr %q; want 1 and %q", code, stderr, want)
	}

	// A request whose body never finishes holds the drain until -grace
	// (2s): -s stop must not return before the master has exited.
	m := waitFileMatch(d.logPath, reStarted, 0)
	if m == nil {
		t.Fatalf("no start line in %s", d.logPath)
	}
	nc, err := net.DialTimeout("tcp", m[2], ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")); err != nil {
		t.Fatal(err)
	}
	if code, stderr := ctl("-s", "stop"); code != 0 || stderr != "" {
		t.Errorf("-s stop with a broken config: status %d, stderr %q; want 0 and nothing", code, stderr)
	}
	if first.alive() {
		t.Errorf("master %d still alive when -s stop returned", first.pid)
	}
	if _, err := os.Stat(d.pidfile + ".reload"); !os.IsNotExist(err) {
		t.Errorf("reload file after the stop: %v, want it gone", err)
	}
	// ... so that the next start finds the pidfile free.
	rewrite(t, conf, fmt.Sprintf("pidfile = %s\nworkers = 1\ngrace = 2s\n", d.pidfile))
	start()
	second, err := identify(pidfilePid(d.pidfile))
	if err != nil || second.pid == first.pid {
		t.Fatalf("second start: pidfile names %d (%v), first master was %d", second.pid, err, first.pid)
	}
	d.mu.Lock()
	d.master = second
	d.mu.Unlock()
	d.trackKids()
	if code, stderr := ctl("-s", "quit"); code != 0 || stderr != "" {
		t.Errorf("-s quit: status %d, stderr %q; want 0 and nothing", code, stderr)
	}
	if second.alive() {
		t.Errorf("master %d still alive when -s quit returned", second.pid)
	}
	want = "procpool: not running (no master holds " + d.pidfile + ")\n"
	if code, stderr := ctl("-s", "stop"); code != 1 || stderr != want {
		t.Errorf("-s stop with nothing running: status %d, stderr %q; want 1 and %q", code, stderr, want)
	}
}

func readReloadFile(t *testing.T, pidfile string) string {
	t.Helper()
	b, err := os.ReadFile(pidfile + ".reload")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestControlStopTimeout: -s stop waits -grace (its own) plus 5 s, then
// says the master is still running and exits 1.
func TestControlStopTimeout(t *testing.T) {
	t.Parallel()
	pidfile := filepath.Join(t.TempDir(), "procpool.pid")
	s := startServer(t, "-workers=1", "-grace=7s", "-pidfile="+pidfile)
	s.waitReady(1)
	nc, err := net.DialTimeout("tcp", s.addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")); err != nil {
		t.Fatal(err)
	}
	code, stderr := runToExit(t, "-s", "stop", "-grace=0s", "-pidfile", pidfile)
	want := fmt.Sprintf("procpool: master %d still running 5s after SIGTERM (give -s the master's -grace to wait longer)\n", s.pid)
	if code != 1 || stderr != want {
		t.Errorf("-s stop: status %d, stderr %q; want 1 and %q", code, stderr, want)
	}
	if s.hasExited() {
		t.Errorf("master exited before its -grace")
	}
	// Said again, -s stop waits for the rest of the drain.
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", pidfile); code != 0 || stderr != "" {
		t.Errorf("second -s stop: status %d, stderr %q; want 0 and nothing", code, stderr)
	}
	if pidAlive(s.pid) {
		t.Errorf("master still alive when the second -s stop returned")
	}
}

// TestNoPidfileHint: a foreground master without -pidfile cannot be found
// by -s; it says so, with its pid, once it serves.
func TestNoPidfileHint(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1")
	s.waitReady(1)
	want := fmt.Sprintf(`msg="no -pidfile: procpool -s cannot find this master; signal it by pid, or start it with -pidfile FILE" pid=%d`, s.pid)
	if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		return slices.ContainsFunc(lines, func(l string) bool { return strings.HasSuffix(l, want) })
	}) {
		t.Errorf("no %s in the log:\n%s", want, s.log)
	}
}

// TestProcessTitles: ps, top and pgrep tell the processes apart. Every
// thread of the master is named procpool and of child i procpool/i (comm);
// argv[0] of a child is "procpool: child SLOT gen GEN", of a detached or
// upgraded master "procpool: master".
func TestProcessTitles(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	kids := s.waitReady(2)
	checkComm(t, s.pid, "procpool")
	for _, k := range kids {
		checkComm(t, k.pid, "procpool/"+strconv.Itoa(k.slot))
		checkArgv0(t, k.pid, fmt.Sprintf("procpool: child %d gen 0", k.slot))
	}
	s.signal(syscall.SIGHUP)
	if !s.waitGen(reReloadDone, 1, startTimeout) {
		t.Fatalf("reload not done; log:\n%s", s.log)
	}
	gen1 := s.ready(1)
	for _, k := range gen1 {
		checkArgv0(t, k.pid, fmt.Sprintf("procpool: child %d gen 1", k.slot))
	}
	if pgrep, err := exec.LookPath("pgrep"); err == nil && len(gen1) > 0 {
		out, _ := exec.Command(pgrep, "-f", "^procpool: child 0 gen 1 ").Output()
		if !slices.Contains(strings.Fields(string(out)), strconv.Itoa(gen1[0].pid)) {
			t.Errorf("pgrep -f '^procpool: child 0 gen 1 ' found %q, want %d among them", out, gen1[0].pid)
		}
		out, _ = exec.Command(pgrep, "-x", "procpool/1").Output()
		if !slices.Contains(strings.Fields(string(out)), strconv.Itoa(gen1[1].pid)) {
			t.Errorf("pgrep -x procpool/1 found %q, want %d among them", out, gen1[1].pid)
		}
	}

	d := newDaemon(t)
	if code, stderr := d.start("-workers=1"); code != 0 {
		t.Fatalf("-daemon exited %d: %s", code, stderr)
	}
	checkComm(t, d.pid(), "procpool") // exec'd as /proc/self/exe: "exe" unless renamed
	checkArgv0(t, d.pid(), "procpool: master")
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", d.pidfile); code != 0 {
		t.Errorf("-s stop: %d %s", code, stderr)
	}
}

// checkComm expects every thread of pid to be called name.
func checkComm(t *testing.T, pid int, name string) {
	t.Helper()
	files, err := threadFiles(pid, "comm")
	if err != nil {
		t.Fatal(err)
	}
	for tid, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimSpace(string(b)) != name {
			t.Errorf("thread %d of %d is called %q, want %q", tid, pid, strings.TrimSpace(string(b)), name)
		}
	}
}

func checkArgv0(t *testing.T, pid int, want string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if argv0, _, _ := strings.Cut(string(b), "\x00"); argv0 != want {
		t.Errorf("argv[0] of %d is %q, want %q", pid, argv0, want)
	}
}

// TestLogJSONDurations: -log-json writes durations as Go writes them
// ("3s"), not as nanoseconds.
func TestLogJSONDurations(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	if code, stderr := d.start("-workers=1", "-log-json"); code != 0 {
		t.Fatalf("-daemon exited %d: %s", code, stderr)
	}
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", d.pidfile); code != 0 {
		t.Fatalf("-s stop: %d %s", code, stderr)
	}
	if !waitFileHas(d.logPath, `"msg":"graceful stop","grace":"3s"`, 0) {
		b, _ := os.ReadFile(d.logPath)
		t.Errorf(`no "grace":"3s" in the graceful stop line:\n%s`, b)
	}
}

// refusedAtOnce waits until the server on port has taken or closed each of
// conns, and says how many it closed.
func refusedAtOnce(t *testing.T, port int, conns []net.Conn) (refused int) {
	t.Helper()
	settled := pollFor(ioTimeout, func() bool {
		table, err := tcpTable(port)
		if err != nil {
			t.Fatal(err)
		}
		refused = 0
		for _, c := range conns {
			e, found := entryFor(table, c.LocalAddr().(*net.TCPAddr).Port)
			switch {
			case found && e.state != tcpEstablished:
				refused++
			case !found || e.inode == 0:
				return false // still queued for accept
			}
		}
		return true
	})
	if !settled {
		t.Fatalf("the admin server neither took nor closed %d connections", len(conns))
	}
	return refused
}

// TestAdminListenerBounds: a connection that sends nothing is closed after
// the header timeout (5s); beyond 32 open connections one more is closed at
// once; a stale socket file is replaced. (Tests listen on loopback only, so
// -admin-public is checked by TestUsageMessages's refusals alone.)
func TestAdminListenerBounds(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-admin=localhost:0")
	s.waitReady(1)
	local := adminAddr(t, s)
	if _, err := adminGet(local, "/status"); err != nil {
		t.Fatalf("GET /status on %s: %v", local, err)
	}

	// 32 silent connections hold every slot, and a 33rd is closed at once.
	// The silent ones are cut by the 5 s header timeout: on a loaded machine
	// the setup may outlast it and free a slot, so it is tried again then.
	// So is a round in which the server closed a silent one at once: the
	// connection of an earlier request still held its slot (the server
	// closes it a moment after its answer).
	_, adminPort, _ := net.SplitHostPort(local)
	port, _ := strconv.Atoi(adminPort)
	for attempt := 1; ; attempt++ {
		begun := time.Now()
		var conns []net.Conn
		for range 32 {
			c, err := net.DialTimeout("tcp", local, ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		if refused := refusedAtOnce(t, port, conns); refused > 0 && attempt < 5 {
			for _, c := range conns {
				c.Close()
			}
			continue
		}
		over, err := net.DialTimeout("tcp", local, ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		over.SetDeadline(time.Now().Add(3 * time.Second))
		over.Write([]byte("GET /status HTTP/1.1\r\nHost: x\r\n\r\n"))
		n, err := over.Read(make([]byte, 1))
		closed := n == 0 && err != nil && !isTimeout(err)
		over.Close()
		for _, c := range conns {
			c.Close()
		}
		if closed {
			break
		}
		if time.Since(begun) < 4*time.Second || attempt == 3 {
			t.Errorf("connection 33: read %d, %v; want it closed at once", n, err)
			break
		}
	}
	if !pollFor(2*time.Second, func() bool { _, err := adminGet(local, "/status"); return err == nil }) {
		t.Errorf("GET /status fails after the connections closed")
	}

	// A connection that says nothing is closed by the listener's timeouts.
	idle, err := net.DialTimeout("tcp", local, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	began := time.Now()
	idle.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Errorf("idle connection: read %d, %v after %v; want closed by the admin listener", n, err, time.Since(began))
	}

	// A socket file an earlier master left behind is replaced.
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	u := startServer(t, "-workers=1", "-admin=unix:"+sock)
	u.waitReady(1)
	if code, stderr := runToExit(t, "-s", "status", "-admin=unix:"+sock); code != 0 {
		t.Errorf("-s status on the replaced socket: status %d, %s", code, stderr)
	}
}
