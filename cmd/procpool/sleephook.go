//go:build procpool_sleeptest

package main

// This file exists only for the stall and watchdog tests (stall_test.go),
// which build a variant of the binary with -tags procpool_sleeptest: in it
// GET /sleep/N holds the child's loop for N milliseconds, as an inline
// handler that blocks would, and GET /burn/N spins the CPU for N ms, as an
// expensive inline handler would (scripts/stall uses it for its uneven
// load), and GET /leak/N keeps N KiB for good, as a leaking handler would.
// Ordinary builds never include it.

import (
	"strconv"
	"strings"
	"time"

	"github.com/procpool/procpool/child"
)

// leaked holds what /leak/N allocated, touched so that it is resident.
var leaked [][]byte

func init() {
	testRoute = func(w *child.Response, r *child.Request) bool {
		if kb, ok := strings.CutPrefix(string(r.Path), "/leak/"); ok {
			n, err := strconv.Atoi(kb)
			if err != nil || n < 0 || n > 1<<20 {
				return false
			}
			b := make([]byte, n<<10)
			for i := range b {
				b[i] = 1
			}
			leaked = append(leaked, b)
			w.WriteString("leaked\n")
			return true
		}
		ms, sleep := strings.CutPrefix(string(r.Path), "/sleep/")
		if !sleep {
			var burn bool
			if ms, burn = strings.CutPrefix(string(r.Path), "/burn/"); !burn {
				return false
			}
		}
		n, err := strconv.Atoi(ms)
		if err != nil || n < 0 {
			return false
		}
		d := time.Duration(n) * time.Millisecond
		if sleep {
			time.Sleep(d)
		} else {
			for start := time.Now(); time.Since(start) < d; {
			}
		}
		w.SetContentType("text/plain")
		w.WriteString("slept\n")
		return true
	}
}
