package master_test

import (
	"path/filepath"
	"testing"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

// TestNoFdLeak runs every success and failure path of Listen, Reserve and
// the pidfile functions and checks that the fds open afterwards are the
// ones before. Not parallel: other tests open fds while they run.
func TestNoFdLeak(t *testing.T) {
	dir := t.TempDir()
	round := func(i int) {
		// Listen: success, in use, bad address.
		fd, addr := listen(t, "127.0.0.1:0", 0, false)
		if fd2, err := master.Listen(addr, 0, false); err == nil {
			t.Fatalf("Listen on a taken port succeeded (fd %d)", fd2)
		}
		if fd2, err := master.Listen(addr, 0, true); err == nil {
			t.Fatalf("reuseport Listen on a taken port succeeded (fd %d)", fd2)
		}
		if _, err := master.Listen("127.0.0.1:x", 0, false); err == nil {
			t.Fatal("Listen on a bad address succeeded")
		}
		// Reserve: refused by the plain listener (in the probe), then
		// success with port 0 and a child joining.
		if fd2, err := master.Reserve(addr); err == nil {
			t.Fatalf("Reserve on a taken port succeeded (fd %d)", fd2)
		}
		unix.Close(fd)
		r, err := master.Reserve(addr) // free now: probe, then bind
		if err != nil {
			t.Fatal(err)
		}
		c, err := master.Listen(addr, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		if fd2, err := master.Reserve(addr); err == nil { // refused: c listens
			t.Fatalf("Reserve on a served port succeeded (fd %d)", fd2)
		}
		unix.Close(c)
		unix.Close(r)

		// Pidfile: create, refused create, probes, take-over, remove.
		path := filepath.Join(dir, "p.pid")
		p, err := master.CreatePidfile(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := master.CreatePidfile(path); err == nil {
			t.Fatal("second CreatePidfile succeeded")
		}
		if _, err := master.RunningPid(path); err != nil {
			t.Fatal(err)
		}
		p.Release()
		if _, err := master.RunningPid(path); err != master.ErrNotRunning {
			t.Fatalf("RunningPid on a released file: %v", err)
		}
		p, err = master.CreatePidfile(path)
		if err != nil {
			t.Fatal(err)
		}
		p.Remove()
		if _, err := master.RunningPid(path); err != master.ErrNotRunning {
			t.Fatalf("RunningPid on a removed file: %v", err)
		}
		if _, err := master.CreatePidfile(filepath.Join(dir, "none", "p.pid")); err == nil {
			t.Fatal("CreatePidfile in a missing directory succeeded")
		}
	}
	round(0) // first, so that whatever the runtime opens once is open
	before := fdCount(t)
	for i := 1; i <= 5; i++ {
		round(i)
	}
	if after := fdCount(t); after != before {
		t.Errorf("%d fds open before, %d after", before, after)
	}
}
