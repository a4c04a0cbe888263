package master

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// system is what the master asks of the kernel about processes. Its
// decisions (spawn, reap, respawn with backoff, retire, upgrade) reach
// processes only through it, and the clock only through Master.now, so the
// tests of those decisions run against fake processes in milliseconds; the
// tests of cmd/procpool run the real thing.
type system struct {
	// start starts path confined to cpu (none when cpu < 0), under
	// SCHED_BATCH when batch is set, and returns its pid.
	start func(cpu int, batch bool, path string, argv []string, attr *syscall.ProcAttr) (pid int, err error)
	// wait collects one exited child without blocking, as
	// Wait4(-1, WNOHANG) does: pid 0 when none has exited.
	wait func(ws *syscall.WaitStatus) (pid int, err error)
	// kill sends sig to pid.
	kill func(pid int, sig syscall.Signal) error
}

// kernel is the real system.
var kernel = system{
	start: forkExecPinned,
	wait: func(ws *syscall.WaitStatus) (int, error) {
		return syscall.Wait4(-1, ws, syscall.WNOHANG, nil)
	},
	kill: unix.Kill,
}
