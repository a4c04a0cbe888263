package main

// The master's log, as the tests read it: lines collected from its stderr,
// waited on, and parsed for the children it announces.

import (
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// logBuf collects a process's stderr lines and wakes waiters on each one.
type logBuf struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func newLogBuf() *logBuf { return &logBuf{changed: make(chan struct{})} }

func (l *logBuf) add(line string) {
	l.mu.Lock()
	l.lines = append(l.lines, line)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *logBuf) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func (l *logBuf) String() string { return strings.Join(l.snapshot(), "\n") }

// waitFor waits until cond holds for the lines so far, or until timeout or
// stop (which may be nil) is closed; it reports whether cond held.
func (l *logBuf) waitFor(timeout time.Duration, stop <-chan struct{}, cond func([]string) bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		l.mu.Lock()
		ok := cond(l.lines)
		ch := l.changed
		l.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-stop:
			return cond(l.snapshot())
		case <-timer.C:
			return false
		}
	}
}

var (
	reStarted = regexp.MustCompile(`msg="master started" pid=(\d+) listen=(\S+)`)
	reSpawned = regexp.MustCompile(`msg="child spawned" pid=(\d+) slot=(\d+) gen=(\d+)`)
	reReady   = regexp.MustCompile(`msg="child ready" pid=(\d+) slot=(\d+) gen=(\d+)`)
)

// kidInfo is a child as the master's log announces it.
type kidInfo struct{ pid, slot, gen int }

func parseKids(lines []string, re *regexp.Regexp) []kidInfo {
	var kids []kidInfo
	for _, line := range lines {
		if m := re.FindStringSubmatch(line); m != nil {
			pid, _ := strconv.Atoi(m[1])
			slot, _ := strconv.Atoi(m[2])
			gen, _ := strconv.Atoi(m[3])
			kids = append(kids, kidInfo{pid, slot, gen})
		}
	}
	return kids
}
