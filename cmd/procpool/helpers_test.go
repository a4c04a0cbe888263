package main

// End-to-end tests: they build the real binary once, start it as a master
// on 127.0.0.1:0 and look at it only from outside (its log, HTTP, /proc).
//
// Every started master gets a cleanup that stops it with SIGTERM and fails
// the test if the master or any child it ever spawned outlives the stop.

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
// (environment, extra files) before it starts.
func startServerWith(t *testing.T, adjust func(*exec.Cmd), args ...string) *server {
	t.Helper()
	all := append([]string{"-listen=127.0.0.1:0", "-grace=3s"}, args...)
	cmd := exec.Command(binPath, all...)
	cmd.Env = serverEnv()
	if adjust != nil {
		adjust(cmd)
	}
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
		stderr: r, kids: map[int]procID{}}
	go s.readLog()
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.stop)

	var m []string
	ok := s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		for _, line := range lines {
			if m = reStarted.FindStringSubmatch(line); m != nil {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("master %v did not log its start within %v; log:\n%s", all, startTimeout, s.log)
	}
	if pid, _ := strconv.Atoi(m[1]); pid != s.pid {
		t.Fatalf("master logged pid %d, started pid %d", pid, s.pid)
	}
	s.addr = m[2]
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

func (s *server) readLog() {
	sc := bufio.NewScanner(s.stderr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := reSpawned.FindStringSubmatch(line); m != nil {
			pid, _ := strconv.Atoi(m[1])
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

func sortKids(kids []kidInfo) {
	slices.SortStableFunc(kids, func(a, b kidInfo) int { return cmp.Compare(a.slot, b.slot) })
}

// children are the master's live children now, from /proc.
func (s *server) children() []int {
	s.t.Helper()
	pids, err := childPids(s.pid)
	if err != nil {
		s.t.Fatalf("children of %d: %v", s.pid, err)
	}
	for _, pid := range pids {
		s.track(pid)
	}
	return pids
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
	alive := func() []procID {
		var l []procID
		for _, id := range kids {
			if id.alive() {
				l = append(l, id)
			}
		}
		return l
	}
	left := pollFor(2*time.Second, func() bool { return len(alive()) == 0 })
	if !left {
		for _, id := range alive() {
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
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = serverEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("procpool %v still running after %v; killed. stderr:\n%s", args, startTimeout, stderr.String())
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("procpool %v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
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
// ordinary build.
func useBin(bin string) func(*exec.Cmd) {
	return func(c *exec.Cmd) {
		c.Path = bin
		c.Args[0] = bin
	}
}
