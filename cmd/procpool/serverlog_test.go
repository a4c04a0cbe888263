package main

// The master's log, as the tests read it: lines collected from its stderr,
// waited on, and parsed for the children it announces.

import (
	"cmp"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
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
	reStarted     = regexp.MustCompile(`msg="master started" pid=(\d+) listen=(\S+)`)
	reSpawned     = regexp.MustCompile(`msg="child spawned" pid=(\d+) slot=(\d+) gen=(\d+)`)
	reReady       = regexp.MustCompile(`msg="child ready" pid=(\d+) slot=(\d+) gen=(\d+)`)
	reReloadBegun = regexp.MustCompile(`msg="reload begun" gen=(\d+)`)
	reReloadDone  = regexp.MustCompile(`msg="reload done" gen=(\d+)`)
	reWorkers     = regexp.MustCompile(`msg="workers changed" workers=(\d+)`)
	reLogTime     = regexp.MustCompile(`^time=(\S+) `)
)

// logStart is what the master's start line says; pid 0 when a line is not
// that line.
type logStart struct {
	pid    int
	listen string
}

// parseStart reads the master's start line, in text or (-log-json) JSON.
func parseStart(line string) logStart {
	if m := reStarted.FindStringSubmatch(line); m != nil {
		pid, _ := strconv.Atoi(m[1])
		return logStart{pid, m[2]}
	}
	var e struct {
		Msg    string `json:"msg"`
		Pid    int    `json:"pid"`
		Listen string `json:"listen"`
	}
	if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil && e.Msg == "master started" {
		return logStart{e.Pid, e.Listen}
	}
	return logStart{}
}

// spawnedPid is the pid of the child a "child spawned" line announces, in
// text or JSON; 0 for any other line.
func spawnedPid(line string) int {
	if m := reSpawned.FindStringSubmatch(line); m != nil {
		pid, _ := strconv.Atoi(m[1])
		return pid
	}
	var e struct {
		Msg string `json:"msg"`
		Pid int    `json:"pid"`
	}
	if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil && e.Msg == "child spawned" {
		return e.Pid
	}
	return 0
}

// kidInfo is a child as the master's log announces it.
type kidInfo struct{ pid, slot, gen int }

// parseKids are the children announced by the lines that match re
// (reSpawned, reReady), in the order of the lines.
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

func kidPids(kids []kidInfo) []int {
	pids := make([]int, len(kids))
	for i, k := range kids {
		pids[i] = k.pid
	}
	return pids
}

func sortedPids(kids []kidInfo) []int {
	pids := kidPids(kids)
	slices.Sort(pids)
	return pids
}

func sortKids(kids []kidInfo) {
	slices.SortStableFunc(kids, func(a, b kidInfo) int { return cmp.Compare(a.slot, b.slot) })
}

// lineIndex is the index of the first line that contains every one of
// parts, or -1.
func lineIndex(lines []string, parts ...string) int {
	for i, line := range lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return i
		}
	}
	return -1
}

// lineTime is the time the master wrote a log line.
func lineTime(t *testing.T, line string) time.Time {
	t.Helper()
	m := reLogTime.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("log line %q has no time", line)
	}
	ts, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		t.Fatalf("log line %q: time: %v", line, err)
	}
	return ts
}

// firstTime is the time of the first log line that contains every one of
// parts; zero if there is none.
func firstTime(t *testing.T, lines []string, parts ...string) time.Time {
	t.Helper()
	i := lineIndex(lines, parts...)
	if i < 0 {
		return time.Time{}
	}
	return lineTime(t, lines[i])
}

// waitLog waits until the master logs a line that contains every one of
// parts.
func waitLog(t *testing.T, s *server, parts ...string) {
	t.Helper()
	if !s.log.waitFor(ioTimeout, s.exited, func(lines []string) bool { return lineIndex(lines, parts...) >= 0 }) {
		t.Fatalf("master did not log %q; log:\n%s", parts, s.log)
	}
}

// waitGen waits until the master logs re with gen as its first field.
func (s *server) waitGen(re *regexp.Regexp, gen int, timeout time.Duration) bool {
	want := strconv.Itoa(gen)
	return s.log.waitFor(timeout, s.exited, func(lines []string) bool {
		for _, line := range lines {
			if m := re.FindStringSubmatch(line); m != nil && m[1] == want {
				return true
			}
		}
		return false
	})
}

// waitFileMatch polls until the file at path matches re, and returns the
// first match.
func waitFileMatch(path string, re *regexp.Regexp, timeout time.Duration) []string {
	var m []string
	pollFor(timeout, func() bool {
		b, err := os.ReadFile(path)
		if err == nil {
			m = re.FindStringSubmatch(string(b))
		}
		return m != nil
	})
	return m
}

// waitFileHas polls until the file at path contains text.
func waitFileHas(path, text string, timeout time.Duration) bool {
	return pollFor(timeout, func() bool {
		b, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(b), text)
	})
}
