package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

// control is `procpool -s NAME`: find the master through the pidfile and
// send it the signal that NAME stands for.
func control(s *settings, stderr io.Writer) int {
	sig, _ := master.SignalByName(s.signal)
	pid, err := master.RunningPid(s.pidfile)
	if errors.Is(err, master.ErrNotRunning) {
		fmt.Fprintf(stderr, "procpool: not running (no master holds %s)\n", s.pidfile)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return exitFailure
	}
	if err := unix.Kill(pid, sig); err != nil {
		fmt.Fprintf(stderr, "procpool: signal %s to pid %d: %v\n", s.signal, pid, err)
		return exitFailure
	}
	return exitOK
}
