package master

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// parseCPUList parses a kernel cpu list such as "0-3,8,10-11".
func parseCPUList(t *testing.T, s string) []int {
	t.Helper()
	var cpus []int
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			t.Fatalf("cpu list %q: %v", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				t.Fatalf("cpu list %q: %v", s, err)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

func TestParseCPUList(t *testing.T) {
	t.Parallel()
	if got, want := parseCPUList(t, "0-2,5,7-8\n"), []int{0, 1, 2, 5, 7, 8}; !slices.Equal(got, want) {
		t.Errorf("parseCPUList = %v, want %v", got, want)
	}
}

// cpusAllowed reads Cpus_allowed_list from a /proc status file.
func cpusAllowed(t *testing.T, status string) []int {
	t.Helper()
	b, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return parseCPUList(t, v)
		}
	}
	t.Fatalf("%s has no Cpus_allowed_list", status)
	return nil
}

// lockThread locks the test's goroutine to its thread, whose mask the test
// may narrow, and returns the mask; the test defers restore with it (not a
// Cleanup, which runs on another goroutine and so another thread).
func lockThread(t *testing.T) unix.CPUSet {
	t.Helper()
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	return old
}

// restore puts back the locked thread's mask and unlocks it; if it cannot,
// the goroutine ends still locked, and the runtime drops the thread.
func restore(t *testing.T, old *unix.CPUSet) {
	if err := unix.SchedSetaffinity(0, old); err != nil {
		t.Errorf("restore mask: %v", err)
		return
	}
	runtime.UnlockOSThread()
}

// threadSched is the scheduling policy and priority of the test's thread.
func threadSched(t *testing.T) *unix.SchedAttr {
	t.Helper()
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return attr
}

func threadMask(t *testing.T) unix.CPUSet {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	return set
}

func TestAllowedCPUsMatchesKernel(t *testing.T) {
	t.Parallel()
	old := lockThread(t)
	defer restore(t, &old)
	got := allowedCPUs()
	want := cpusAllowed(t, "/proc/thread-self/status")
	if len(got) == 0 || !slices.Equal(got, want) {
		t.Errorf("allowedCPUs() = %v, want %v (Cpus_allowed_list)", got, want)
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("allowedCPUs() = %v, not ascending and distinct", got)
	}
	if n := old.Count(); len(got) != n {
		t.Errorf("allowedCPUs() has %d CPUs, the mask %d", len(got), n)
	}
}

// TestAllowedCPUsFollowsMask: a master started under taskset (or in a
// cpuset) only uses the CPUs it is given, in ascending order.
func TestAllowedCPUsFollowsMask(t *testing.T) {
	t.Parallel()
	old := lockThread(t)
	defer restore(t, &old)
	all := allowedCPUs()
	subsets := [][]int{{all[len(all)-1]}, {all[0]}}
	if len(all) >= 2 {
		subsets = append(subsets, []int{all[0], all[len(all)-1]})
	}
	if len(all) >= 3 {
		subsets = append(subsets, all[1:])
	}
	for _, sub := range subsets {
		var set unix.CPUSet
		for _, c := range sub {
			set.Set(c)
		}
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			t.Fatalf("sched_setaffinity(%v): %v", sub, err)
		}
		if got := allowedCPUs(); !slices.Equal(got, sub) {
			t.Errorf("under mask %v allowedCPUs() = %v", sub, got)
		}
	}
}

// startPinned runs forkExecPinned on a child that exits at once (true(1),
// or else this test binary running no test), returns the child's allowed
// CPUs and reaps it. A zombie's status still shows its mask.
func startPinned(t *testing.T, cpu int) ([]int, error) {
	t.Helper()
	exe, err := exec.LookPath("true")
	if err != nil {
		if exe, err = os.Executable(); err != nil {
			t.Fatal(err)
		}
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	attr := &syscall.ProcAttr{
		Env:   []string{"GOMAXPROCS=1"},
		Files: []uintptr{null.Fd(), null.Fd(), null.Fd()},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	pid, err := forkExecPinned(cpu, false, exe, []string{"child", "-test.run=^$"}, attr)
	if err != nil {
		return nil, err
	}
	defer func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err != unix.EINTR {
				break
			}
		}
	}()
	return cpusAllowed(t, "/proc/"+strconv.Itoa(pid)+"/status"), nil
}

// TestForkExecPinned: each child runs on exactly the CPU it is given,
// slot i on the i-th allowed CPU mod their count, as spawn computes it;
// cpu -1 leaves the child the master's whole mask; and the forking thread
// gets its own mask back each time.
func TestForkExecPinned(t *testing.T) {
	// Not parallel: see spawnPolicy.
	old := lockThread(t)
	defer restore(t, &old)
	cpus := allowedCPUs()
	for slot := range 2*len(cpus) + 1 {
		cpu := cpus[slot%len(cpus)]
		got, err := startPinned(t, cpu)
		if err != nil {
			t.Fatalf("slot %d, cpu %d: %v", slot, cpu, err)
		}
		if !slices.Equal(got, []int{cpu}) {
			t.Errorf("slot %d: child runs on %v, want [%d]", slot, got, cpu)
		}
		if m := threadMask(t); m != old {
			t.Fatalf("slot %d: forking thread left with mask of %d CPUs, want its own %d", slot, m.Count(), old.Count())
		}
	}
	got, err := startPinned(t, -1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, cpus) {
		t.Errorf("unpinned child runs on %v, want %v", got, cpus)
	}
	if m := threadMask(t); m != old {
		t.Errorf("forking thread's mask changed by an unpinned spawn")
	}
}

func TestForkExecPinnedBadCPU(t *testing.T) {
	// Not parallel: see spawnPolicy.
	old := lockThread(t)
	defer restore(t, &old)
	// Beyond what a CPUSet holds: the mask would be empty, which the
	// kernel refuses; nothing is started and the mask is kept.
	bad := len(unix.CPUSet{}) * 64
	pid, err := forkExecPinned(bad, false, "/nonexistent", []string{"x"}, &syscall.ProcAttr{})
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "sched_setaffinity" || !errors.Is(err, unix.EINVAL) {
		t.Errorf("forkExecPinned(%d) = %d, %v; want a sched_setaffinity EINVAL", bad, pid, err)
	}
	if pid != 0 {
		t.Errorf("forkExecPinned failed but returned pid %d", pid)
	}
	if m := threadMask(t); m != old {
		t.Errorf("forking thread's mask changed by a failed pin")
	}
	// A spawn that fails to exec still restores the mask.
	if _, err := forkExecPinned(allowedCPUs()[0], false, "/nonexistent/binary", []string{"x"}, &syscall.ProcAttr{}); !errors.Is(err, unix.ENOENT) {
		t.Errorf("exec of a missing binary: %v, want ENOENT", err)
	}
	if m := threadMask(t); m != old {
		t.Errorf("forking thread's mask not restored after a failed exec")
	}
}

// spawnPolicy starts sleep(1) through forkExecPinned from the locked
// calling thread and returns the child's scheduling attributes.
//
// The tests that fork are not parallel, so they run before the parallel
// ones. A fork copies every fd of this process: until the child execs, a
// socket another test has just closed stays bound, and that test's next bind
// of the port fails with "address already in use".
func spawnPolicy(t *testing.T, batch bool) (*unix.SchedAttr, error) {
	t.Helper()
	exe, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	attr := &syscall.ProcAttr{Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}}
	pid, err := forkExecPinned(-1, batch, exe, []string{"sleep", "10"}, attr)
	if err != nil {
		return nil, err
	}
	got, err := unix.SchedGetAttr(pid, 0)
	unix.Kill(pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != unix.EINTR {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return got, nil
}

// TestForkExecPinnedBatch: with batch, the child runs under SCHED_BATCH and
// the forking thread keeps its own policy; without, the child has the
// forking thread's policy.
func TestForkExecPinnedBatch(t *testing.T) {
	// Not parallel: see spawnPolicy.
	old := lockThread(t)
	defer restore(t, &old)
	before := threadSched(t)
	for _, batch := range []bool{true, false} {
		got, err := spawnPolicy(t, batch)
		if err != nil {
			t.Fatal(err)
		}
		want := before.Policy
		if batch {
			want = unix.SCHED_BATCH
		}
		if got.Policy != want {
			t.Errorf("batch=%v: child policy %d, want %d", batch, got.Policy, want)
		}
		if now, err := unix.SchedGetAttr(0, 0); err != nil || *now != *before {
			t.Errorf("batch=%v: forking thread's policy changed: %+v, was %+v (%v)", batch, now, before, err)
		}
	}
}

// TestForkExecPinnedBatchFromRealtime: a master run under a real-time
// policy (chrt -f) still starts SCHED_BATCH children; the kernel refuses
// SCHED_BATCH with a real-time priority, so none may be carried over.
func TestForkExecPinnedBatchFromRealtime(t *testing.T) {
	old := lockThread(t)
	defer restore(t, &old)
	before := threadSched(t)
	rt := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
	if err := unix.SchedSetAttr(0, &rt, 0); err != nil {
		t.Skipf("cannot run this thread under SCHED_FIFO: %v", err)
	}
	defer unix.SchedSetAttr(0, before, 0)
	got, err := spawnPolicy(t, true)
	if err != nil {
		t.Fatalf("spawn from a SCHED_FIFO thread: %v", err)
	}
	if got.Policy != unix.SCHED_BATCH || got.Priority != 0 {
		t.Errorf("child policy %d priority %d, want SCHED_BATCH (%d) priority 0", got.Policy, got.Priority, unix.SCHED_BATCH)
	}
	if now, err := unix.SchedGetAttr(0, 0); err != nil || now.Policy != unix.SCHED_FIFO {
		t.Errorf("forking thread's policy after the spawn: %+v (%v), want SCHED_FIFO kept", now, err)
	}
}
