package main

import (
	"fmt"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// allowedCPUs are the CPUs this test may run on, which the server inherits.
func allowedCPUs(t *testing.T) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatalf("sched_getaffinity: %v", err)
	}
	var cpus []int
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) == 0 {
		t.Fatal("sched_getaffinity: no CPUs")
	}
	return cpus
}

// TestAffinity checks the CPU mask of every thread of every child: with
// -affinity=true, slot i runs on the i-th allowed CPU (mod their number);
// with -affinity=false, nothing is narrowed. The master is never narrowed.
func TestAffinity(t *testing.T) {
	t.Parallel()
	allowed := allowedCPUs(t)
	// One child more than CPUs, so that the slot order wraps.
	workers := len(allowed) + 1

	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("affinity=%v", on), func(t *testing.T) {
			t.Parallel()
			s := startServer(t, fmt.Sprintf("-affinity=%v", on), fmt.Sprintf("-workers=%d", workers))
			kids := s.waitReady(workers)
			// Serve something first, so the runtime has started its threads.
			if r := s.get(t, "/"); r.status != 200 {
				t.Fatalf("GET /: %d", r.status)
			}

			for i, k := range kids {
				if k.slot != i {
					t.Fatalf("ready children have slots %v, want 0..%d", kids, workers-1)
				}
				threads, err := threadCPUs(k.pid)
				if err != nil {
					t.Fatal(err)
				}
				want := allowed
				if on {
					want = []int{allowed[k.slot%len(allowed)]}
				}
				for tid, cpus := range threads {
					if !slices.Equal(cpus, want) {
						t.Errorf("child slot %d (pid %d) thread %d: CPUs %v, want %v", k.slot, k.pid, tid, cpus, want)
					}
				}
			}

			threads, err := threadCPUs(s.pid)
			if err != nil {
				t.Fatal(err)
			}
			for tid, cpus := range threads {
				if !slices.Equal(cpus, allowed) {
					t.Errorf("master (pid %d) thread %d: CPUs %v, want %v", s.pid, tid, cpus, allowed)
				}
			}
		})
	}
}
