package master_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

func pidPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "procpool.pid")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustCreate(t *testing.T, path string) *master.Pidfile {
	t.Helper()
	p, err := master.CreatePidfile(path)
	if err != nil {
		t.Fatalf("CreatePidfile: %v", err)
	}
	t.Cleanup(p.Release)
	return p
}

func mustWrite(t *testing.T, p *master.Pidfile, pid int) {
	t.Helper()
	if err := p.Write(pid); err != nil {
		t.Fatalf("Write(%d): %v", pid, err)
	}
}

// holdLock locks path as another master would, on its own open file
// description, with content in it; the returned func lets go.
func holdLock(t *testing.T, path, content string) func() {
	t.Helper()
	writeFile(t, path, content)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		t.Fatalf("flock: %v", err)
	}
	done := false
	release := func() {
		if !done {
			done = true
			unix.Close(fd)
		}
	}
	t.Cleanup(release)
	return release
}

var ourPid = strconv.Itoa(os.Getpid()) + "\n"

func TestCreatePidfileWritesPidAndLocks(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	mustCreate(t, path)
	if got := readFile(t, path); got != ourPid {
		t.Errorf("pidfile holds %q, want %q", got, ourPid)
	}
	// The lock is held: a lock from another open file description fails.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Errorf("flock on a held pidfile: %v, want EWOULDBLOCK", err)
	}
}

func TestCreatePidfileAlreadyRunning(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	p := mustCreate(t, path)

	p2, err := master.CreatePidfile(path)
	if err == nil {
		p2.Release()
		t.Fatal("second CreatePidfile on a held pidfile succeeded")
	}
	want := "already running (pid " + strconv.Itoa(os.Getpid()) + ", pidfile " + path + ")"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if p2 != nil {
		t.Errorf("got a *Pidfile with the error")
	}

	// The pid named is the one in the file, which the holder may rewrite
	// (an upgrade writes the new master's), and the failed attempt leaves
	// the file alone.
	mustWrite(t, p, 4242)
	_, err = master.CreatePidfile(path)
	if err == nil || !strings.Contains(err.Error(), "already running (pid 4242,") {
		t.Errorf("error %v, want one naming pid 4242", err)
	}
	if got := readFile(t, path); got != "4242\n" {
		t.Errorf("after a refused CreatePidfile the file holds %q, want %q", got, "4242\n")
	}
}

func TestCreatePidfileAlreadyRunningOtherHolder(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	holdLock(t, path, "31337\n")
	_, err := master.CreatePidfile(path)
	if err == nil || !strings.Contains(err.Error(), "already running (pid 31337,") {
		t.Fatalf("error %v, want already running (pid 31337, ...)", err)
	}
	if errors.Is(err, master.ErrNotRunning) {
		t.Errorf("error %v is ErrNotRunning", err)
	}
}

func TestCreatePidfileTakesOverStale(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{
		"longer pid": "1234567890123\n", // must be truncated, not overwritten
		"garbage":    "not a pid at all, and quite long\n",
		"empty":      "",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := pidPath(t)
			writeFile(t, path, content)
			if _, err := master.RunningPid(path); !errors.Is(err, master.ErrNotRunning) {
				t.Fatalf("RunningPid on a stale file: %v, want ErrNotRunning", err)
			}
			mustCreate(t, path)
			if got := readFile(t, path); got != ourPid {
				t.Errorf("taken-over pidfile holds %q, want %q", got, ourPid)
			}
			if pid, err := master.RunningPid(path); err != nil || pid != os.Getpid() {
				t.Errorf("RunningPid = %d, %v; want %d", pid, err, os.Getpid())
			}
		})
	}
}

func TestCreatePidfileBadPath(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "x.pid")
	p, err := master.CreatePidfile(path)
	if err == nil {
		p.Release()
		t.Fatal("CreatePidfile in a missing directory succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v, want ENOENT naming %s", err, path)
	}
	if strings.Contains(err.Error(), "already running") {
		t.Errorf("error %v claims a master is running", err)
	}
}

func TestPidfileWrite(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	p := mustCreate(t, path)
	for _, pid := range []int{1234567, 12} { // longer, then shorter
		mustWrite(t, p, pid)
		want := strconv.Itoa(pid) + "\n"
		if got := readFile(t, path); got != want {
			t.Errorf("after Write(%d) file holds %q, want %q", pid, got, want)
		}
		if got, err := master.RunningPid(path); err != nil || got != pid {
			t.Errorf("RunningPid = %d, %v; want %d", got, err, pid)
		}
	}
}

func TestPidfileRemove(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	p := mustCreate(t, path)
	p.Remove()
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after Remove: stat %v, want not exist", err)
	}
	if _, err := master.RunningPid(path); !errors.Is(err, master.ErrNotRunning) {
		t.Errorf("RunningPid after Remove: %v, want ErrNotRunning", err)
	}
	// The lock is gone with it: a new master starts, and a second Remove of
	// the old handle must not delete the new master's file.
	q := mustCreate(t, path)
	p.Remove()
	p.Release()
	if got := readFile(t, path); got != ourPid {
		t.Errorf("new pidfile holds %q after the old handle's Remove, want %q", got, ourPid)
	}
	q.Remove()
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after second Remove: stat %v, want not exist", err)
	}
}

// TestPidfileReleaseKeepsFile is the upgrade hand-over: the old master
// writes the new pid, releases, and its exit path's Remove is then a no-op.
func TestPidfileReleaseKeepsFile(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	p := mustCreate(t, path)
	mustWrite(t, p, 777)
	p.Release()
	if got := readFile(t, path); got != "777\n" {
		t.Errorf("released pidfile holds %q, want %q", got, "777\n")
	}
	if _, err := master.RunningPid(path); !errors.Is(err, master.ErrNotRunning) {
		t.Errorf("RunningPid after Release: %v, want ErrNotRunning", err)
	}
	p.Remove()
	p.Release() // twice is harmless
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("Remove after Release deleted the file: %v", err)
	}
	mustCreate(t, path)
	if got := readFile(t, path); got != ourPid {
		t.Errorf("re-created pidfile holds %q, want %q", got, ourPid)
	}
}

func TestRunningPid(t *testing.T) {
	t.Parallel()
	t.Run("missing", func(t *testing.T) {
		t.Parallel()
		pid, err := master.RunningPid(filepath.Join(t.TempDir(), "none.pid"))
		if pid != 0 || err != master.ErrNotRunning {
			t.Errorf("RunningPid = %d, %v; want 0, ErrNotRunning", pid, err)
		}
	})
	t.Run("stale", func(t *testing.T) {
		t.Parallel()
		path := pidPath(t)
		writeFile(t, path, "4321\n")
		pid, err := master.RunningPid(path)
		if pid != 0 || err != master.ErrNotRunning {
			t.Errorf("RunningPid = %d, %v; want 0, ErrNotRunning", pid, err)
		}
		// Probing took no lasting lock.
		mustCreate(t, path)
	})
	t.Run("held by us", func(t *testing.T) {
		t.Parallel()
		path := pidPath(t)
		mustCreate(t, path)
		for range 2 {
			pid, err := master.RunningPid(path)
			if err != nil || pid != os.Getpid() {
				t.Errorf("RunningPid = %d, %v; want %d", pid, err, os.Getpid())
			}
		}
		// Probing did not disturb the holder's lock.
		if p, err := master.CreatePidfile(path); err == nil {
			p.Release()
			t.Error("CreatePidfile succeeded after RunningPid on a held pidfile")
		}
	})
	t.Run("held by another", func(t *testing.T) {
		t.Parallel()
		path := pidPath(t)
		release := holdLock(t, path, "  987 \n")
		if pid, err := master.RunningPid(path); err != nil || pid != 987 {
			t.Errorf("RunningPid = %d, %v; want 987", pid, err)
		}
		release()
		if pid, err := master.RunningPid(path); err != master.ErrNotRunning {
			t.Errorf("RunningPid after the holder let go = %d, %v; want ErrNotRunning", pid, err)
		}
	})
	for name, content := range map[string]string{"empty": "", "garbage": "hello\n", "zero": "0\n", "negative": "-5\n"} {
		t.Run("held, "+name, func(t *testing.T) {
			t.Parallel()
			path := pidPath(t)
			holdLock(t, path, content)
			pid, err := master.RunningPid(path)
			if err == nil || errors.Is(err, master.ErrNotRunning) || pid != 0 {
				t.Fatalf("RunningPid = %d, %v; want an error other than ErrNotRunning", pid, err)
			}
			if want := "pidfile " + path + ": no pid in it"; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		t.Parallel()
		path := pidPath(t)
		writeFile(t, path, "12\n")
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		var err, setup error
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Root reads any file through CAP_DAC_OVERRIDE: this thread
			// gives it up. Capabilities belong to a thread, and this one
			// is never handed back: locked, it ends with the goroutine.
			runtime.LockOSThread()
			if setup = dropFileCaps(); setup != nil {
				return
			}
			if _, e := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); e != unix.EACCES {
				setup = fmt.Errorf("opening the mode-0 file: %v, want EACCES", e)
				if e == nil {
					setup = errors.New("the mode-0 file opens all the same")
				}
				return
			}
			_, err = master.RunningPid(path)
		}()
		<-done
		if setup != nil {
			t.Skipf("cannot make a file unreadable to this test: %v", setup)
		}
		if err == nil || errors.Is(err, master.ErrNotRunning) || !errors.Is(err, fs.ErrPermission) {
			t.Errorf("RunningPid on an unreadable file: %v, want a permission error", err)
		}
	})
}

// dropFileCaps takes the capabilities that override file permissions
// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) out of the calling thread's
// effective set, so that even root is held to a file's mode. Only this
// thread changes: the caller locks it and never unlocks it.
func dropFileCaps() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Effective &^= 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_DAC_READ_SEARCH
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// waitBlockedFlock waits until this process has a flock waiter blocked on
// path's inode, as /proc/locks shows it ("->" lines).
func waitBlockedFlock(t *testing.T, path string) bool {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	inode := ":" + strconv.FormatUint(st.Ino, 10) + " "
	pid := " " + strconv.Itoa(os.Getpid()) + " "
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/locks")
		if err != nil {
			return false
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "-> FLOCK") && strings.Contains(line, pid) && strings.Contains(line, inode) {
				return true
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("TakePidfile never blocked on the lock")
	return false
}

type took struct {
	p   *master.Pidfile
	err error
}

// startTake calls TakePidfile in a goroutine.
func startTake(path string) <-chan took {
	ch := make(chan took, 1)
	go func() {
		p, err := master.TakePidfile(path)
		ch <- took{p, err}
	}()
	return ch
}

// takeResult is the outcome of startTake, failing t on an error.
func takeResult(t *testing.T, r took) *master.Pidfile {
	t.Helper()
	if r.err != nil {
		t.Fatalf("TakePidfile: %v", r.err)
	}
	t.Cleanup(r.p.Release)
	return r.p
}

func TestTakePidfileWaitsForRelease(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	old := mustCreate(t, path)
	mustWrite(t, old, 1111)
	taking := startTake(path)
	if !waitBlockedFlock(t, path) {
		time.Sleep(20 * time.Millisecond) // no /proc/locks: best effort
	}
	select {
	case r := <-taking:
		takeResult(t, r)
		t.Fatal("TakePidfile returned while the lock was held")
	default:
	}
	if got := readFile(t, path); got != "1111\n" {
		t.Errorf("waiting TakePidfile changed the file to %q", got)
	}
	old.Release()
	select {
	case r := <-taking:
		takeResult(t, r)
	case <-time.After(5 * time.Second):
		t.Fatal("TakePidfile did not return after Release")
	}
	if got := readFile(t, path); got != ourPid {
		t.Errorf("taken pidfile holds %q, want %q", got, ourPid)
	}
	if pid, err := master.RunningPid(path); err != nil || pid != os.Getpid() {
		t.Errorf("RunningPid = %d, %v; want %d", pid, err, os.Getpid())
	}
	old.Remove() // the old master's exit path: must leave the file
	if _, err := os.Stat(path); err != nil {
		t.Errorf("old handle's Remove deleted the taken-over file: %v", err)
	}
}

func TestTakePidfileFree(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	p, err := master.TakePidfile(path) // nobody holds it: no wait
	if err != nil {
		t.Fatal(err)
	}
	defer p.Remove()
	if got := readFile(t, path); got != ourPid {
		t.Errorf("pidfile holds %q, want %q", got, ourPid)
	}
}

// TestTakePidfileAfterHolderRemoves: a master waiting in TakePidfile while
// the holder exits with Remove must not end up locking the unlinked file
// (then RunningPid would say not running and a third master could start):
// it has to lock the file that path names.
func TestTakePidfileAfterHolderRemoves(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	old := mustCreate(t, path)
	taking := startTake(path)
	if !waitBlockedFlock(t, path) {
		old.Release()
		takeResult(t, <-taking)
		t.Skip("/proc/locks unavailable: cannot order the race")
	}
	old.Remove()
	takeResult(t, <-taking)
	if pid, err := master.RunningPid(path); err != nil || pid != os.Getpid() {
		t.Errorf("after TakePidfile returned, RunningPid = %d, %v; want %d", pid, err, os.Getpid())
	}
	if q, err := master.CreatePidfile(path); err == nil {
		q.Release()
		t.Errorf("CreatePidfile succeeded while TakePidfile's caller holds the pidfile")
	}
}

// TestPidfileRefusesLinks: a pidfile is truncated and written by a root
// master, so a symbolic or hard link planted in its directory must not make
// it overwrite what the link points at; RunningPid refuses them too.
func TestPidfileRefusesLinks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	writeFile(t, victim, "precious\n")
	symlink := filepath.Join(dir, "sym.pid")
	if err := os.Symlink(victim, symlink); err != nil {
		t.Fatal(err)
	}
	hardlink := filepath.Join(dir, "hard.pid")
	if err := os.Link(victim, hardlink); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.pid")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{symlink, "pidfile " + symlink + " is a symbolic link; refusing to follow it"},
		{hardlink, "pidfile " + hardlink + " has 2 hard links; refusing to write through it"},
		{fifo, "pidfile " + fifo + " is not a regular file; refusing to use it"},
	}
	for _, tt := range tests {
		for name, open := range map[string]func(string) (*master.Pidfile, error){
			"CreatePidfile": master.CreatePidfile, "TakePidfile": master.TakePidfile,
		} {
			p, err := open(tt.path)
			if err == nil {
				p.Release()
				t.Errorf("%s(%s) succeeded", name, tt.path)
			} else if err.Error() != tt.want {
				t.Errorf("%s(%s): %q, want %q", name, tt.path, err, tt.want)
			}
		}
		if _, err := master.RunningPid(tt.path); err == nil || err.Error() != tt.want {
			t.Errorf("RunningPid(%s): %v, want %q", tt.path, err, tt.want)
		}
	}
	if got := readFile(t, victim); got != "precious\n" {
		t.Errorf("the link's target now holds %q", got)
	}
}

// TestPidfileRemoveSparesReplacement: Remove deletes the path only while it
// still names the file this process locked.
func TestPidfileRemoveSparesReplacement(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	p := mustCreate(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "someone else's\n")
	p.Remove()
	if got := readFile(t, path); got != "someone else's\n" {
		t.Errorf("after Remove the replacement holds %q", got)
	}
}

// TestPendingPidfile is how a master started by an upgrade holds its
// pidfile: known at once, locked once the old master lets go.
func TestPendingPidfile(t *testing.T) {
	t.Parallel()
	path := pidPath(t)
	release := holdLock(t, path, "1\n")
	p := master.PendingPidfile(path)
	if p.Path() != path {
		t.Errorf("Path() = %q, want %q", p.Path(), path)
	}
	if err := p.Write(5); err == nil || !strings.Contains(err.Error(), "not held") {
		t.Errorf("Write before Take: %v, want not held", err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Take() }()
	if !waitBlockedFlock(t, path) {
		t.Fatal("Take did not wait for the lock")
	}
	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Take still waiting after the holder let go")
	}
	t.Cleanup(p.Release)
	if got := readFile(t, path); got != ourPid {
		t.Errorf("taken pidfile holds %q, want %q", got, ourPid)
	}
	if pid, err := master.RunningPid(path); err != nil || pid != os.Getpid() {
		t.Errorf("RunningPid = %d, %v", pid, err)
	}
	p.Remove()
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Remove: stat %v", err)
	}
}
