//go:build procpool_crashtest

package main

// This file exists only for the tests of respawning (signals_test.go,
// promises_test.go), which build a variant of the binary with -tags
// procpool_crashtest: in it children exit as soon as they start, before
// they can report ready, so that the tests can watch the master respawn
// them with backoff, or give up on a fatal status. Ordinary builds never
// include it.
//
// The environment of the master (which its children inherit) shapes the
// crash:
//
//	CRASHTEST_STATUS  the exit status (default 1; 2 is fatal)
//	CRASHTEST_SLOTS   the slots whose children exit, comma-separated
//	                  (default every slot; the others serve as usual)

import (
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/procpool/procpool/master"
)

func init() {
	slot, ok := master.ChildSlot()
	if !ok {
		return
	}
	if list := os.Getenv("CRASHTEST_SLOTS"); list != "" && !slices.Contains(strings.Split(list, ","), strconv.Itoa(slot)) {
		return
	}
	status := 1
	if n, err := strconv.Atoi(os.Getenv("CRASHTEST_STATUS")); err == nil {
		status = n
	}
	os.Exit(status)
}
