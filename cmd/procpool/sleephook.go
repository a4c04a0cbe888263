//go:build procpool_sleeptest

package main

// This file exists only for the stall and watchdog tests (stall_test.go),
// which build a variant of the binary with -tags procpool_sleeptest: in it
// GET /sleep/N holds the child's loop for N milliseconds, as an inline
// handler that burns CPU or blocks would. Ordinary builds never include it.

import (
	"strconv"
	"strings"
	"time"

	"github.com/procpool/procpool/child"
)

func init() {
	testRoute = func(w *child.Response, r *child.Request) bool {
		ms, ok := strings.CutPrefix(string(r.Path), "/sleep/")
		if !ok {
			return false
		}
		n, err := strconv.Atoi(ms)
		if err != nil || n < 0 {
			return false
		}
		time.Sleep(time.Duration(n) * time.Millisecond)
		w.SetContentType("text/plain")
		w.WriteString("slept\n")
		return true
	}
}
