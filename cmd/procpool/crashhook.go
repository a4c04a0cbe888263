//go:build procpool_crashtest

package main

// This file exists only for TestCrashLoopBackoff (signals_test.go), which
// builds a variant of the binary with -tags procpool_crashtest: in it every
// child exits with status 1 as soon as it starts, before it can report
// ready, so that the test can watch the master respawn it with backoff.
// Ordinary builds never include it.

import (
	"os"

	"github.com/procpool/procpool/master"
)

func init() {
	if _, ok := master.ChildSlot(); ok {
		os.Exit(1)
	}
}
