package main

// End-to-end tests: they build the real binary once, start it as a master
// on 127.0.0.1:0 and look at it only from outside (its log, HTTP, /proc).
//
// Every started master gets a cleanup that stops it with SIGTERM and fails
// the test if the master or any child it ever spawned outlives the stop.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/procpool/procpool/master"
)

// binPath is the procpool binary TestMain builds.
var binPath string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "procpool-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "procpool")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goTool(), "build", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building procpool:", err)
		return 1
	}
	return m.Run()
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// serverEnv is the test's environment less the PROCPOOL_ variables (which
// would turn the master into a child) and systemd's socket activation and
// notification variables.
func serverEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		switch {
		case strings.HasPrefix(name, "PROCPOOL_"), strings.HasPrefix(name, "LISTEN_"), name == "NOTIFY_SOCKET":
			continue
		}
		env = append(env, e)
	}
	return env
}

// Bounds for waiting on a server; generous, since the tests run in parallel
// on small machines, and none of them is slept: every wait polls.
const (
	startTimeout = 10 * time.Second
	stopTimeout  = 8 * time.Second // longer than the -grace tests run with
	ioTimeout    = 10 * time.Second
)

// server is one running master started by a test.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	pid    int
	addr   string // 127.0.0.1:PORT
	port   int
	log    *logBuf
	exited chan struct{} // closed once the master has been waited for
	stderr *os.File      // read end of the master's (and children's) stderr
	logEOF chan struct{} // closed once readLog has read all of it

	mu   sync.Mutex
	kids map[int]procID // every child ever seen, by pid
}

// startServer starts a master on 127.0.0.1:0 (args may override -listen)
// and waits until it has logged its address. It does not wait for the
// children: see waitReady.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	return startServerWith(t, nil, args...)
}

// startServerWith is startServer with a hook that may adjust the command
// (binary, environment, extra files) before it starts: see useBin.
func startServerWith(t *testing.T, adjust func(*exec.Cmd), args ...string) *server {
	t.Helper()
	all := append([]string{"-listen=127.0.0.1:0", "-grace=3s"}, args...)
	cmd := exec.Command(binPath, all...)
	cmd.Env = serverEnv()
	if adjust != nil {
		adjust(cmd)
	}
	s := launch(t, cmd)
	var started logStart
	ok := s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		for _, line := range lines {
			if started = parseStart(line); started.pid != 0 {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("master %s %v did not log its start within %v; log:\n%s", cmd.Path, all, startTimeout, s.log)
	}
	if started.pid != s.pid {
		t.Fatalf("master logged pid %d, started pid %d", started.pid, s.pid)
	}
	s.addr = started.listen
	_, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatalf("master logged listen=%q: %v", s.addr, err)
	}
	s.port, _ = strconv.Atoi(port)
	if s.port == 0 {
		t.Fatalf("master logged listen=%q: port 0 not resolved", s.addr)
	}
	return s
}

// launch starts cmd as a master, its stderr read into the server's log, with
// the cleanup that stops it.
func launch(t *testing.T, cmd *exec.Cmd) *server {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		t.Fatal(err)
	}
	w.Close()
	s := &server{t: t, cmd: cmd, pid: cmd.Process.Pid, log: newLogBuf(), exited: make(chan struct{}),
		stderr: r, logEOF: make(chan struct{}), kids: map[int]procID{}}
	go s.readLog()
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *server) readLog() {
	defer close(s.logEOF)
	sc := bufio.NewScanner(s.stderr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if pid := spawnedPid(line); pid != 0 {
			s.track(pid)
		}
		s.log.add(line)
	}
}

// track remembers a child, with its start time so that a reused pid is
// never mistaken for it.
func (s *server) track(pid int) {
	id, err := identify(pid)
	if err != nil {
		id = procID{pid: pid} // already gone
	}
	s.mu.Lock()
	if _, ok := s.kids[pid]; !ok {
		s.kids[pid] = id
	}
	s.mu.Unlock()
}

// waitReady waits until n children of generation 0 have reported ready and
// returns them in slot order (the order they became ready in, for ties).
func (s *server) waitReady(n int) []kidInfo {
	s.t.Helper()
	var kids []kidInfo
	ok := s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		kids = kids[:0]
		for _, k := range parseKids(lines, reReady) {
			if k.gen == 0 {
				kids = append(kids, k)
			}
		}
		return len(kids) >= n
	})
	if !ok {
		s.t.Fatalf("%d children ready within %v, want %d; log:\n%s", len(kids), startTimeout, n, s.log)
	}
	for _, k := range kids {
		s.track(k.pid)
	}
	sortKids(kids)
	return kids
}

// ready are the children of generation gen that reported ready so far, in
// slot order.
func (s *server) ready(gen int) []kidInfo {
	var kids []kidInfo
	for _, k := range parseKids(s.log.snapshot(), reReady) {
		if k.gen == gen {
			kids = append(kids, k)
		}
	}
	sortKids(kids)
	return kids
}

// children are the master's live children now, from /proc.
func (s *server) children() []int {
	s.t.Helper()
	pids := childrenOf(s.t, s.pid)
	for _, pid := range pids {
		s.track(pid)
	}
	return pids
}

// waitChildren polls until the master's children, from /proc, are exactly
// want (sorted), and returns the last list it saw.
func (s *server) waitChildren(want []int, timeout time.Duration) ([]int, bool) {
	var got []int
	ok := pollFor(timeout, func() bool {
		got = s.children()
		return slices.Equal(got, want)
	})
	return got, ok
}

// trackedAlive are the children this server ever had, other than keep,
// that are still alive.
func (s *server) trackedAlive(keep []int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var l []int
	for pid, id := range s.kids {
		if !slices.Contains(keep, pid) && id.alive() {
			l = append(l, pid)
		}
	}
	slices.Sort(l)
	return l
}

// signal sends sig to the master.
func (s *server) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := syscall.Kill(s.pid, sig); err != nil {
		s.t.Fatalf("%v to master %d: %v", sig, s.pid, err)
	}
}

// waitExit waits for the master to exit by itself, for up to timeout;
// after says after what.
func (s *server) waitExit(timeout time.Duration, after string) {
	s.t.Helper()
	select {
	case <-s.exited:
	case <-time.After(timeout):
		s.t.Fatalf("master still running %v after %s; log:\n%s", timeout, after, s.log)
	}
	// Its last lines may still be in the pipe: read them before the test
	// looks (the pipe ends once the master and its children are gone).
	select {
	case <-s.logEOF:
	case <-time.After(ioTimeout):
	}
}

// hasExited reports whether the master has exited (and been waited for).
func (s *server) hasExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// stop is the cleanup: SIGTERM, a bounded wait, SIGKILL as a last resort, and
// a failure for any process of this server that is still alive.
func (s *server) stop() {
	t := s.t
	if !s.hasExited() {
		if pids, err := childPids(s.pid); err == nil {
			for _, pid := range pids {
				s.track(pid)
			}
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
			if code := s.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("master exited with status %d after SIGTERM (%v), want 0", code, s.cmd.ProcessState)
			}
		case <-time.After(stopTimeout):
			t.Errorf("master %d still alive %v after SIGTERM; killing it", s.pid, stopTimeout)
			s.cmd.Process.Kill()
			<-s.exited
		}
	}

	s.mu.Lock()
	kids := make([]procID, 0, len(s.kids))
	for _, id := range s.kids {
		kids = append(kids, id)
	}
	s.mu.Unlock()
	// The master waits for its children before it exits, and a child whose
	// master is gone dies of PR_SET_PDEATHSIG; give that a moment to land.
	if !waitGone(kids, 2*time.Second) {
		for _, id := range stillAlive(kids) {
			t.Errorf("child %d of master %d still alive after the master exited; killing it", id.pid, s.pid)
			syscall.Kill(id.pid, syscall.SIGKILL)
		}
	}
	s.stderr.Close()
	if t.Failed() {
		t.Logf("log of master %d:\n%s", s.pid, s.log)
	}
}

// runToExit runs the binary with args, expecting it to exit by itself, and
// returns its exit status and stderr.
func runToExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	code, _, stderr := runOutput(t, args...)
	return code, stderr
}

// runOutput is runToExit with what the command wrote to stdout too.
func runOutput(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = serverEnv()
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("procpool %v still running after %v; killed. stderr:\n%s", args, startTimeout, errOut.String())
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("procpool %v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

// pollFor polls cond until it holds or timeout passes.
func pollFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 20*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return cond()
		}
		time.Sleep(delay)
	}
}

// variants caches the binaries built with test-only build tags, one per tag.
var variants struct {
	sync.Mutex
	bins map[string]string
}

// variantBin builds (once per test binary) the server with a test-only
// build tag, such as procpool_sleeptest, and returns its path. Start it with
// startServerWith(t, useBin(bin), ...).
func variantBin(t *testing.T, tag string) string {
	t.Helper()
	variants.Lock()
	defer variants.Unlock()
	if bin, ok := variants.bins[tag]; ok {
		return bin
	}
	bin := filepath.Join(filepath.Dir(binPath), "procpool-"+tag)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool(), "build", "-tags", tag, "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -tags %s: %v\n%s", tag, err, out)
	}
	if variants.bins == nil {
		variants.bins = map[string]string{}
	}
	variants.bins[tag] = bin
	return bin
}

// useBin is a startServerWith hook that runs bin instead of the test's
// ordinary build, with env added to the master's environment (which its
// children inherit).
func useBin(bin string, env ...string) func(*exec.Cmd) {
	return func(c *exec.Cmd) {
		c.Path = bin
		c.Args[0] = bin
		c.Env = append(c.Env, env...)
	}
}

// installBin puts the test's binary at path, as an install does: a new
// name renamed over the old. It is linked rather than copied: a copy's write
// fd, inherited for a moment by a process another test forks, makes exec
// fail with ETXTBSY.
func installBin(t *testing.T, path string) {
	t.Helper()
	os.Remove(path + ".new")
	if err := os.Link(binPath, path+".new"); err != nil {
		t.Skipf("cannot link the binary into the test's directory: %v", err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// installed is the binary installed in a directory of its own, for a test
// that replaces it, and a pidfile beside it.
func installed(t *testing.T) (bin, pidfile string) {
	t.Helper()
	dir := t.TempDir()
	bin = filepath.Join(dir, "procpool")
	installBin(t, bin)
	return bin, filepath.Join(dir, "procpool.pid")
}

// failUpgrade replaces the binary at bin, which s was started from, with a
// script that exits 1, asks for an upgrade through pidfile and waits until
// the master says it failed.
func failUpgrade(t *testing.T, s *server, bin, pidfile string) {
	t.Helper()
	// A running binary cannot be written to; a new file is renamed over it.
	script := bin + ".broken"
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(script, bin); err != nil {
		t.Fatal(err)
	}
	if code, stderr := runToExit(t, "-s", "upgrade", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s upgrade exited %d: %s", code, stderr)
	}
	waitLog(t, s, `msg="upgrade failed`)
	waitLog(t, s, `msg="new master exited"`) // reaped: no longer among the children
}

// crashServer starts the build with crashhook.go, whose children exit with
// status as soon as they start: in the given slots, or every slot when
// slots is empty.
func crashServer(t *testing.T, status int, slots string, args ...string) *server {
	t.Helper()
	env := []string{"CRASHTEST_STATUS=" + strconv.Itoa(status)}
	if slots != "" {
		env = append(env, "CRASHTEST_SLOTS="+slots)
	}
	return startServerWith(t, useBin(variantBin(t, "procpool_crashtest"), env...), args...)
}

// sleepServer starts the build with sleephook.go, whose children also
// serve /sleep/N, /burn/N and /leak/N.
func sleepServer(t *testing.T, args ...string) *server {
	t.Helper()
	return startServerWith(t, useBin(variantBin(t, "procpool_sleeptest")), args...)
}

// deadPid runs the binary with -h and returns its pid, which is then dead.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command(binPath, "-h")
	cmd.Env = serverEnv()
	if err := cmd.Run(); err != nil {
		t.Fatalf("procpool -h: %v", err)
	}
	return cmd.Process.Pid
}

// pidfilePid is the pid in the pidfile, held by a running master, or 0.
func pidfilePid(path string) int {
	pid, err := master.RunningPid(path)
	if err != nil {
		return 0
	}
	return pid
}

// stopAdopted stops a master that is not the test's child (one started by
// an upgrade, or a daemon) by pid, with its children: SIGTERM, a bounded
// wait, SIGKILL as a last resort with a failure.
func stopAdopted(t *testing.T, id procID) {
	t.Helper()
	if !id.alive() {
		return
	}
	kids, _ := childPids(id.pid)
	var ids []procID
	for _, pid := range kids {
		if k, err := identify(pid); err == nil {
			ids = append(ids, k)
		}
	}
	syscall.Kill(id.pid, syscall.SIGTERM)
	if !pollFor(stopTimeout, func() bool { return !id.alive() }) {
		t.Errorf("master %d still alive %v after SIGTERM; killing it", id.pid, stopTimeout)
		syscall.Kill(id.pid, syscall.SIGKILL)
	}
	if !waitGone(ids, startTimeout) {
		for _, k := range stillAlive(ids) {
			t.Errorf("child %d of master %d still alive after it stopped; killing it", k.pid, id.pid)
			syscall.Kill(k.pid, syscall.SIGKILL)
		}
	}
}

// adoptedCleanup is for a test whose master s starts another with pidfile
// (an upgrade), not the test's child: at cleanup, before the server's own,
// it stops the one the test learnt of by storing it in the returned
// procID, and any other process still running with pidfile on its command
// line, should the test have failed before it learnt of it.
func adoptedCleanup(t *testing.T, s *server, pidfile string) *procID {
	adopted := new(procID)
	t.Cleanup(func() {
		stopAdopted(t, *adopted)
		for _, id := range procsWith(pidfile) {
			if id.pid != s.pid {
				t.Errorf("master %d with pidfile %s still running at the end of the test; stopping it", id.pid, pidfile)
				stopAdopted(t, id)
			}
		}
	})
	return adopted
}

// endings counts how a client's connections ended.
type endings struct {
	mu sync.Mutex
	by map[string]int
}

func (e *endings) add(why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.by == nil {
		e.by = map[string]int{}
	}
	e.by[why]++
}

func (e *endings) list() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.by)
}

// errClass names an error without the addresses in its text, so that like
// endings count together.
func errClass(err error) string {
	var errno syscall.Errno
	switch {
	case errors.Is(err, io.EOF):
		return "EOF (the server closed)"
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	return fmt.Sprintf("%T", err)
}

// endingConn records whether the server ended a connection (a read error
// first) or the client did (a Close first).
type endingConn struct {
	net.Conn
	ends *endings
	once sync.Once
}

func (c *endingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() { c.ends.add("read: " + errClass(err)) })
	}
	return n, err
}

func (c *endingConn) Close() error {
	c.once.Do(func() { c.ends.add("client close") })
	return c.Conn.Close()
}

// fileExists reports whether p names a file (of any type) that stat can see.
func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// nobody is the user the -user tests switch to; the error says why they
// cannot run here.
func nobody() (*user.User, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root to switch users")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, errors.New("no user nobody on this machine")
	}
	return u, nil
}

// debianTool finds a command some tests need, which .ci/run installs from
// Debian's package pkg: on PATH, or in dir, where Debian puts it (a PATH
// without sbin is common). A machine without it fails the test: skipping
// would let a missing check pass unnoticed.
func debianTool(t *testing.T, name, dir, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join(dir, name); fileExists(p) {
		return p
	}
	t.Fatalf("%s not found: install it (apt-get install %s; .ci/run does)", name, pkg)
	return ""
}
