package main

import (
	"flag"
	"io"
	"slices"
	"testing"
)

// Every flag is either applied by a reload or refused by it: a new flag
// without a decision fails here. The applied ones are those the children
// are started with, or the master takes on a reload (master's
// TestReloadableFields keeps that side honest).
func TestReloadDecisions(t *testing.T) {
	applied := []string{"workers", "affinity", "sched-batch", "grace", "max-conns", "pool",
		"max-request-line", "max-header-bytes", "max-headers", "max-body",
		"header-timeout", "body-timeout", "idle-timeout", "write-timeout", "linger-timeout",
		"access-log", "dispatch", "stall", "watchdog", "max-requests", "max-lifetime", "max-rss",
		"recycle-jitter", "proxy-protocol", "proxy-from"}
	s, err := parseSettings(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s.fs.VisitAll(func(f *flag.Flag) {
		n := 0
		for _, l := range [][]string{applied, fixedOnReload, notSettings} {
			if slices.Contains(l, f.Name) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("-%s: in %d of the lists applied, fixedOnReload, notSettings; want exactly one (and the README's flag table to say so)", f.Name, n)
		}
	})
}

// A reload that changes a setting it cannot apply is refused, naming it.
func TestReloadRefusesFixed(t *testing.T) {
	s, _ := parseSettings([]string{"-admin=127.0.0.1:9000", "-workers=2"}, io.Discard)
	n, _ := parseSettings([]string{"-admin=127.0.0.1:9001", "-workers=3", "-log-json"}, io.Discard)
	err := s.reloadError(n)
	want := `-log-json ("false" to "true"), -admin ("127.0.0.1:9000" to "127.0.0.1:9001"): change only with a restart or an upgrade`
	if err == nil || err.Error() != want {
		t.Errorf("reload error %v, want %s", err, want)
	}
	same, _ := parseSettings([]string{"-admin=127.0.0.1:9000", "-workers=4"}, io.Discard)
	if err := s.reloadError(same); err != nil {
		t.Errorf("a reload that changes only -workers: %v", err)
	}
}
