package main

import (
	"errors"
	"io/fs"
	"syscall"
	"testing"
	"time"
)

// threadPolicies maps each thread of pid to its scheduling policy, the
// 41st field of /proc/PID/task/TID/stat (0 SCHED_OTHER, 3 SCHED_BATCH).
func threadPolicies(t *testing.T, pid int) map[int]int {
	t.Helper()
	files, err := threadFiles(pid, "stat")
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]int{}
	for tid, f := range files {
		st, err := readStatFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			t.Fatal(err)
		}
		m[tid] = st.policy
	}
	return m
}

const schedOther, schedBatch = 0, 3

func checkPolicies(t *testing.T, who string, pid, want int) {
	t.Helper()
	for tid, p := range threadPolicies(t, pid) {
		if p != want {
			t.Errorf("%s (pid %d) thread %d: policy %d, want %d", who, pid, tid, p, want)
		}
	}
}

// TestSchedBatch: with -sched-batch every thread of every child runs under
// SCHED_BATCH and the master's do not; a reload that turns it off starts
// children under the normal policy.
func TestSchedBatch(t *testing.T) {
	t.Parallel()
	conf := writeConfig(t, "sched-batch = true\n")
	s := startServer(t, "-config="+conf, "-workers=2")
	kids := s.waitReady(2)
	if r := s.get(t, "/"); r.status != 200 {
		t.Fatalf("GET /: %d", r.status)
	}
	for _, k := range kids {
		checkPolicies(t, "child", k.pid, schedBatch)
	}
	checkPolicies(t, "master", s.pid, schedOther)

	rewrite(t, conf, "sched-batch = false\n")
	s.signal(syscall.SIGHUP)
	if !s.waitGen(reReloadDone, 1, startTimeout) {
		t.Fatalf("reload not done; log:\n%s", s.log)
	}
	after := s.ready(1)
	if len(after) != 2 {
		t.Fatalf("generation 1 has ready children %v, want 2", after)
	}
	if _, ok := s.waitChildren(sortedPids(after), 5*time.Second); !ok {
		t.Fatalf("old children still there after the reload")
	}
	for _, k := range after {
		checkPolicies(t, "child after reload", k.pid, schedOther)
	}
}
