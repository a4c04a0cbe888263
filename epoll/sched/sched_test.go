package sched_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/procpool/procpool/epoll/sched"
	"golang.org/x/sys/unix"
)

// In the helper process started by runPinned: report GOMAXPROCS before and
// after SpareP, then exit.
func init() {
	if os.Getenv("SCHED_SPAREP_HELPER") == "" {
		return
	}
	before := runtime.GOMAXPROCS(0)
	sched.SpareP()
	fmt.Printf("%d %d\n", before, runtime.GOMAXPROCS(0))
	os.Exit(0)
}

// runPinned starts this test binary as a helper pinned to one CPU, the way a
// master starts a child: the mask of the forking thread is inherited.
func runPinned(t *testing.T, env ...string) string {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	for cpu := 0; cpu < 1024; cpu++ {
		if old.IsSet(cpu) {
			one.Set(cpu)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &old)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, "SCHED_SPAREP_HELPER=1")...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestSparePRaisesPinnedProcess(t *testing.T) {
	if got := runPinned(t, "GOMAXPROCS="); got != "1 2" {
		t.Fatalf("GOMAXPROCS before and after SpareP in a process pinned to one CPU: %q, want \"1 2\"", got)
	}
}

func TestSparePKeepsUserSetting(t *testing.T) {
	if got := runPinned(t, "GOMAXPROCS=1"); got != "1 1" {
		t.Fatalf("with GOMAXPROCS=1 in the environment: %q, want \"1 1\"", got)
	}
}
