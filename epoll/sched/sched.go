// Package sched tunes how the Go scheduler treats a loop that owns its OS
// thread and sleeps in epoll_wait: the master's, and each child's. It sits
// under epoll/ because each rule here exists for that sleep (see
// epoll.Poller.Wait), while package epoll itself stays a thin wrapper of
// the system calls.
package sched

import (
	"os"
	"runtime"
)

// SpareP raises GOMAXPROCS from 1 to 2 unless the GOMAXPROCS environment
// variable set it. A loop that sleeps in Wait keeps its P in a syscall. When
// that P is the only one, none is idle, so sysmon takes it away at once, wakes
// a thread to spin on it, and stays awake itself: several context switches
// per sleep, about a quarter of a pinned child's CPU per request under
// keep-alive load. With a second P idle the runtime leaves a P in a syscall
// alone for 10 ms. Go sizes GOMAXPROCS by the CPU mask, so a process pinned
// to one CPU starts with 1.
func SpareP() {
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
}

// yieldEvery is under sysmon's 10 ms preemption period.
const yieldEvery = 5e6

// Yielder lets other goroutines have the thread every few milliseconds. A
// loop that always finds work never passes through the scheduler, so every
// 10 ms sysmon preempts it with a signal and, if it is in epoll_wait at that
// moment, takes its P away, which also sets sysmon itself polling every
// 20 µs again. Yielding first avoids both. The zero value is ready; a loop
// keeps one.
type Yielder struct {
	at int64
}

// Yield calls runtime.Gosched when the last yield is a few milliseconds
// old; now is the caller's clock in unix nanoseconds.
func (y *Yielder) Yield(now int64) {
	if now >= y.at {
		y.at = now + yieldEvery
		runtime.Gosched()
	}
}
