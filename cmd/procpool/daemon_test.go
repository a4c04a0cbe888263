package main

// Daemon mode and -s control through the pidfile: the detached master is
// found, signalled and stopped by pid only; the test never leaves one
// running.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// daemon is a detached master started by a test, known by its pidfile
// and log file, and every process of it the test has seen.
type daemon struct {
	t                *testing.T
	pidfile, logPath string

	mu     sync.Mutex
	master procID
	kids   map[int]procID
}

// newDaemon prepares the paths of a daemon and the cleanup that stops
// whatever it leaves running: the master by pid (SIGTERM, then SIGKILL),
// every child seen, and any process still running with this test's pidfile
// on its command line (a second start, a new master of an upgrade).
func newDaemon(t *testing.T) *daemon {
	dir := t.TempDir()
	d := &daemon{t: t, pidfile: filepath.Join(dir, "procpool.pid"), logPath: filepath.Join(dir, "procpool.log"),
		kids: map[int]procID{}}
	t.Cleanup(d.cleanup)
	return d
}

// start runs `procpool -daemon` with the daemon's pidfile and log and
// returns its exit status and stderr; then it learns the master's pid.
func (d *daemon) start(args ...string) (int, string) {
	d.t.Helper()
	all := append([]string{"-daemon", "-listen=127.0.0.1:0", "-grace=3s", "-pidfile", d.pidfile, "-log", d.logPath}, args...)
	code, stderr := runToExit(d.t, all...)
	d.learn()
	return code, stderr
}

// learn records the master named in the pidfile, if it runs this test's
// binary and was not known yet, and its children.
func (d *daemon) learn() {
	d.mu.Lock()
	known := d.master.pid != 0
	d.mu.Unlock()
	if !known {
		if pid := pidfilePid(d.pidfile); pid != 0 && runsBinary(pid) {
			if id, err := identify(pid); err == nil {
				d.mu.Lock()
				d.master = id
				d.mu.Unlock()
			}
		}
	}
	d.trackKids()
}

// trackKids records the master's children now.
func (d *daemon) trackKids() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.master.pid == 0 || !d.master.alive() {
		return nil
	}
	pids, _ := childPids(d.master.pid)
	for _, pid := range pids {
		if _, ok := d.kids[pid]; !ok {
			if id, err := identify(pid); err == nil {
				d.kids[pid] = id
			}
		}
	}
	return pids
}

func (d *daemon) cleanup() {
	t := d.t
	d.learn()
	d.mu.Lock()
	m := d.master
	d.mu.Unlock()
	if m.pid != 0 && m.alive() {
		t.Errorf("daemon %d still running at the end of the test; stopping it", m.pid)
		stopAdopted(t, m)
	}
	// A start that failed (a second start, a detached master that could
	// not serve) may still be on its way out when the command that
	// reported the failure returns: it has a while to exit by itself.
	var left []procID
	pollFor(stopTimeout, func() bool { left = procsWith(d.pidfile); return len(left) == 0 })
	for _, id := range left {
		t.Errorf("process %d with pidfile %s still running at the end of the test; stopping it", id.pid, d.pidfile)
		stopAdopted(t, id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range d.kids {
		if id.alive() {
			t.Errorf("child %d of daemon %d still alive; killing it", id.pid, m.pid)
			unix.Kill(id.pid, unix.SIGKILL)
		}
	}
	if t.Failed() {
		for _, p := range []string{d.logPath, d.logPath + ".1"} {
			if b, err := os.ReadFile(p); err == nil {
				t.Logf("%s:\n%s", p, b)
			}
		}
	}
}

// pid is the master's pid (0 if unknown).
func (d *daemon) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.master.pid
}

// TestDaemonLifecycle goes through a daemon's life: a start over a stale pidfile
// that returns once serving, detached in its own session; a second start
// refused; a log rotated with -s reopen; -s stop; -s stop with nothing
// running.
func TestDaemonLifecycle(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)

	// A stale pidfile: the pid of a process that has exited, unlocked.
	dead := deadPid(t)
	if err := os.WriteFile(d.pidfile, []byte(strconv.Itoa(dead)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", d.pidfile); code != 1 || !strings.Contains(stderr, "not running") {
		t.Errorf("-s stop with a stale pidfile: status %d, %q; want 1 and not running", code, stderr)
	}

	code, stderr := d.start("-workers=2")
	if code != 0 {
		t.Fatalf("-daemon exited %d: %s", code, stderr)
	}
	// Serving as soon as the command returned.
	m := waitFileMatch(d.logPath, reStarted, 0)
	if m == nil {
		t.Fatalf("no start line in %s", d.logPath)
	}
	if r, err := fetch(m[2], "/"); err != nil || r.status != 200 || r.body != helloBody {
		t.Errorf("request right after -daemon returned: %+v, %v", r, err)
	}

	// The pidfile names the master (the stale pid was taken over), which
	// leads a session of its own, with no terminal, stdin on /dev/null.
	pid := d.pid()
	if pid == 0 {
		t.Fatalf("pidfile %s names no running master of this binary (holds %d)", d.pidfile, pidfilePid(d.pidfile))
	}
	if logged, _ := strconv.Atoi(m[1]); logged != pid || pid == dead {
		t.Errorf("pidfile holds %d, the log names master %d, the stale pid was %d", pid, logged, dead)
	}
	st, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := unix.Getsid(pid); err != nil || got != pid || st.session != pid {
		t.Errorf("daemon %d is in session %d (getsid %d, %v), want its own", pid, st.session, got, err)
	}
	if st.ttyNr != 0 {
		t.Errorf("daemon %d has controlling terminal %#x, want none", pid, st.ttyNr)
	}
	fds, err := fdTargets(pid)
	if err != nil {
		t.Fatal(err)
	}
	if fds[0] != "/dev/null" || fds[1] != d.logPath || fds[2] != d.logPath {
		t.Errorf("daemon stdio: 0 -> %s, 1 -> %s, 2 -> %s; want /dev/null and the log", fds[0], fds[1], fds[2])
	}
	gen0 := d.trackKids()
	if len(gen0) != 2 {
		t.Errorf("daemon has children %v, want 2", gen0)
	}

	// A second identical start is refused, naming the running master.
	code, stderr = d.start("-workers=2")
	want := fmt.Sprintf("already running (pid %d", pid)
	if code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("second start: status %d, %q; want 1 and %q", code, stderr, want)
	}
	if got := pidfilePid(d.pidfile); got != pid {
		t.Errorf("pidfile holds %d after a refused second start, want %d", got, pid)
	}
	// The refused master exits by itself.
	if !pollFor(startTimeout, func() bool {
		l := procsWith(d.pidfile)
		return len(l) == 1 && l[0].pid == pid
	}) {
		t.Errorf("processes with pidfile %s after the refused start: %v, want only %d", d.pidfile, procsWith(d.pidfile), pid)
	}

	// Log rotation: rename the log, -s reopen, and the next lines go to a
	// new file at the same path.
	rotated := d.logPath + ".1"
	if err := os.Rename(d.logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if code, stderr := runToExit(t, "-s", "reopen", "-pidfile", d.pidfile); code != 0 {
		t.Fatalf("-s reopen exited %d: %s", code, stderr)
	}
	if !pollFor(startTimeout, func() bool { _, err := os.Stat(d.logPath); return err == nil }) {
		t.Fatalf("no new log file at %s after -s reopen", d.logPath)
	}
	// The running children reopen theirs too (SIGUSR1 reaches every
	// child): their stderr, and their stdout, which was the log too, move
	// to the new file, while they run, before the reload below replaces
	// them.
	if where, ok := waitOutputTo(gen0, d.logPath); !ok {
		t.Errorf("after -s reopen the running children's stdout and stderr: %v, want %s for each", where, d.logPath)
	}
	if code, stderr := runToExit(t, "-s", "reload", "-pidfile", d.pidfile); code != 0 {
		t.Fatalf("-s reload exited %d: %s", code, stderr)
	}
	if !waitFileHas(d.logPath, `msg="reload done" gen=1`, startTimeout) {
		t.Errorf("no reload in the new log %s", d.logPath)
	}
	if b, _ := os.ReadFile(rotated); strings.Contains(string(b), "reload begun") {
		t.Errorf("the rotated log got lines after -s reopen:\n%s", b)
	}
	// stdout too: a daemon's fds 1 and 2 are both the log, and neither may
	// keep the rotated file open.
	if fds, err := fdTargets(pid); err != nil || fds[1] != d.logPath || fds[2] != d.logPath {
		t.Errorf("daemon stdout, stderr after reopen -> %q, %q (%v), want %s", fds[1], fds[2], err, d.logPath)
	}
	var gen1 []int
	if !pollFor(startTimeout, func() bool {
		gen1 = d.trackKids()
		return len(gen1) == 2 && !slices.Contains(gen1, gen0[0]) && !slices.Contains(gen1, gen0[1])
	}) {
		t.Errorf("children after the reload %v, want two new ones (old %v)", gen1, gen0)
	}
	for _, k := range gen1 {
		if fds, err := fdTargets(k); err == nil && fds[2] != d.logPath {
			t.Errorf("new child %d logs to %s, want %s", k, fds[2], d.logPath)
		}
	}

	// -s stop: the master exits, the pidfile goes, the children too.
	d.mu.Lock()
	master, kids := d.master, make([]procID, 0, len(d.kids))
	for _, id := range d.kids {
		kids = append(kids, id)
	}
	d.mu.Unlock()
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", d.pidfile); code != 0 {
		t.Fatalf("-s stop exited %d: %s", code, stderr)
	}
	if !pollFor(stopTimeout, func() bool { return !master.alive() }) {
		t.Fatalf("daemon %d still running after -s stop", pid)
	}
	if !pollFor(startTimeout, func() bool { return !fileExists(d.pidfile) }) {
		t.Errorf("pidfile %s still there after the daemon stopped", d.pidfile)
	}
	if !waitGone(kids, startTimeout) {
		t.Errorf("children of the daemon still alive after it stopped")
	}
	if !waitFileHas(d.logPath, `msg="master stopped"`, startTimeout) {
		t.Errorf("no stop in the log")
	}

	// Nothing runs any more.
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", d.pidfile); code != 1 || !strings.Contains(stderr, "not running") {
		t.Errorf("-s stop with nothing running: status %d, %q; want 1 and not running", code, stderr)
	}
}

// Children that run as -user cannot open the root master's -log: at a
// reopen the master passes them the reopened file, so a rotation moves
// their stderr too.
func TestUserChildrenReopenLog(t *testing.T) {
	t.Parallel()
	if _, err := nobody(); err != nil {
		t.Skip(err)
	}
	d := newDaemon(t)
	if code, stderr := d.start("-workers=2", "-user=nobody"); code != 0 {
		t.Fatalf("daemon start exited %d: %s", code, stderr)
	}
	var kids []int
	if !pollFor(startTimeout, func() bool { kids = d.trackKids(); return len(kids) == 2 }) {
		t.Fatalf("children of the daemon: %v", kids)
	}
	if err := os.Rename(d.logPath, d.logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if code, stderr := runToExit(t, "-s", "reopen", "-pidfile", d.pidfile); code != 0 {
		t.Fatalf("-s reopen exited %d: %s", code, stderr)
	}
	if where, ok := waitOutputTo(kids, d.logPath); !ok {
		t.Errorf("after -s reopen the children running as nobody write to %v, want %s", where, d.logPath)
	}
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", d.pidfile); code != 0 {
		t.Fatalf("-s stop exited %d: %s", code, stderr)
	}
}

// waitOutputTo waits until every process in pids has its stdout and stderr
// on path; it returns where they point ("stdout stderr" by pid) and whether
// they got there.
func waitOutputTo(pids []int, path string) (map[int]string, bool) {
	var where map[int]string
	ok := pollFor(startTimeout, func() bool {
		where = map[int]string{}
		all := true
		for _, pid := range pids {
			fds, err := fdTargets(pid)
			if err != nil {
				where[pid] = err.Error()
			} else {
				where[pid] = fds[1] + " " + fds[2]
			}
			all = all && where[pid] == path+" "+path
		}
		return all
	})
	return where, ok
}
