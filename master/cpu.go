package master

import (
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// startProcs is GOMAXPROCS as the runtime set it at start, before a loop's
// SpareP may raise it: the CPU quota of the process's cgroup (Go 1.25 on),
// or the GOMAXPROCS variable, within the CPUs of its affinity mask.
var startProcs = runtime.GOMAXPROCS(0)

// startCPUs is the affinity mask at start, taken before the master's loop
// thread narrows its own to pin a child.
var startCPUs = len(allowedCPUs())

// DefaultWorkers is the number of children when none is asked for: as many
// as the CPUs the process may use, which in a container is its CPU quota
// (runtime.GOMAXPROCS) and under taskset or a cpuset its affinity mask,
// rather than every CPU of the machine (runtime.NumCPU).
func DefaultWorkers() int {
	n := startProcs
	if startCPUs > 0 {
		n = min(n, startCPUs)
	}
	return max(n, 1)
}

// allowedCPUs lists the CPUs this process may run on, in order. Child i is
// pinned to the i-th of them (mod their count), so pinning respects a
// cpuset or taskset the master was started under.
func allowedCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil
	}
	var cpus []int
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// forkExecPinned starts a process confined to cpu (none when cpu < 0), under
// SCHED_BATCH when batch is set.
//
// Affinity in Linux belongs to a thread, and a Go process has many, so pinning
// from inside the child would race with the runtime starting threads. A new
// process instead inherits the mask of the thread that forks it: the master's
// loop thread (locked by Run) narrows its own mask, forks, and restores it.
// Every thread of the child, the runtime's included, then starts pinned. The
// scheduling policy is inherited the same way.
func forkExecPinned(cpu int, batch bool, path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	if batch {
		old, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			return 0, os.NewSyscallError("sched_getattr", err)
		}
		// Only the policy changes (a real-time priority would make the
		// kernel refuse SCHED_BATCH); the nice value stays.
		b := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH, Nice: old.Nice}
		if err := unix.SchedSetAttr(0, &b, 0); err != nil {
			return 0, os.NewSyscallError("sched_setattr", err)
		}
		defer unix.SchedSetAttr(0, old, 0) // as with the mask below
	}
	if cpu < 0 {
		return syscall.ForkExec(path, argv, attr)
	}
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return 0, os.NewSyscallError("sched_getaffinity", err)
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return 0, os.NewSyscallError("sched_setaffinity", err)
	}
	pid, err := syscall.ForkExec(path, argv, attr)
	// Restoring a mask the thread already had cannot fail in practice; if it
	// did, the master would only run on one CPU, which is no reason to fail
	// a spawn that happened.
	unix.SchedSetaffinity(0, &old)
	return pid, err
}
