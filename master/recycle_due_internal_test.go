package master

// Unit tests of when recycling looks, and of the resident-size limit. The
// processes are fakes (fakeSys), the clock is the test's.

import (
	"os"
	"testing"
	"time"
)

// dueTimes is what nextRecycleCheck asks the loop to wake for.
func dueTimes(m *Master) []time.Time {
	var due []time.Time
	m.nextRecycleCheck(func(t time.Time) { due = append(due, t) })
	return due
}

func earliest(ts []time.Time) time.Time {
	var e time.Time
	for _, t := range ts {
		if e.IsZero() || t.Before(e) {
			e = t
		}
	}
	return e
}

// The loop wakes when the first serving child reaches its lifetime limit,
// which jitter only brings forward, and that child, alone, is recycled
// then. A child being replaced, or not serving, is no reason to wake.
func TestRecycleCheckLifetime(t *testing.T) {
	const lifetime = time.Hour
	m, _, kids := newFakeMaster(t, 3, Config{MaxLifetime: lifetime, RecycleJitter: 0.5})
	clk := withClock(m)
	for i, k := range kids {
		k.started, k.lim = clk.now().Add(-time.Duration(i)*10*time.Minute), m.drawLimits()
		if k.lim.lifetime > lifetime || k.lim.lifetime < lifetime/2 {
			t.Fatalf("child %d: lifetime limit %v, want between %v and %v", i, k.lim.lifetime, lifetime/2, lifetime)
		}
	}
	first := kids[0]
	for _, k := range kids {
		if k.started.Add(k.lim.lifetime).Before(first.started.Add(first.lim.lifetime)) {
			first = k
		}
	}
	due := earliest(dueTimes(m))
	if want := first.started.Add(first.lim.lifetime); !due.Equal(want) {
		t.Fatalf("next check %v, want child %d's limit %v", due, first.slot, want)
	}
	m.recycle(due.Add(-time.Nanosecond))
	for _, k := range kids {
		if k.recycle != "" {
			t.Fatalf("child %d recycled before the earliest limit", k.slot)
		}
	}
	clk.t = due
	m.recycle(due)
	for _, k := range kids {
		if (k.recycle != "") != (k == first) {
			t.Fatalf("at the earliest limit child %d has recycle %q; want only child %d", k.slot, k.recycle, first.slot)
		}
	}
	// The marked child no longer sets the wake-up: the next is the others'.
	for _, d := range dueTimes(m) {
		if !d.After(due) {
			t.Fatalf("after the recycle, a wake-up at %v, not after %v", d, due)
		}
	}
	m.retire(kids[0].kid)
	m.retire(kids[1].kid)
	m.retire(kids[2].kid)
	if d := dueTimes(m); len(d) != 0 {
		t.Fatalf("wake-ups %v for children that are not serving", d)
	}
}

// With -max-requests the master looks every requestsEvery (children do not
// announce requests); with -max-rss, at its next read of resident sizes.
func TestRecycleCheckPeriodic(t *testing.T) {
	m, _, _ := newFakeMaster(t, 1, Config{MaxRequests: 1000, MaxRSS: 1 << 40})
	clk := withClock(m)
	m.recycle(clk.now())
	due := dueTimes(m)
	if len(due) != 2 || !due[0].Equal(clk.now().Add(rssEvery)) || !due[1].Equal(clk.now().Add(requestsEvery)) {
		t.Fatalf("wake-ups %v, want the next rss read at +%v and a request count look at +%v", due, rssEvery, requestsEvery)
	}
	m, _, _ = newFakeMaster(t, 1, Config{})
	if due := dueTimes(m); len(due) != 0 {
		t.Fatalf("wake-ups %v without recycling limits", due)
	}
}

// -max-rss reads each child's resident size once per rssEvery, not every
// turn; a child past it is recycled, and replaced before it is retired. A
// child whose size cannot be read is left alone.
func TestRecycleRSS(t *testing.T) {
	m, f, kids := newFakeMaster(t, 2, Config{MaxRSS: 1 << 40})
	clk := withClock(m)
	big := kids[0]
	pid := big.pid
	big.pid = os.Getpid() // a process whose resident size /proc gives: this test's
	t.Cleanup(func() { big.pid = pid })
	start := clk.now()
	m.recycle(start)
	if big.recycle != "" {
		t.Fatal("recycled below its limit")
	}
	big.lim.rss, kids[1].lim.rss = 1, 1
	m.recycle(clk.add(rssEvery - time.Millisecond))
	if big.recycle != "" {
		t.Fatal("the resident size was read again before rssEvery")
	}
	m.recycle(clk.add(time.Millisecond))
	if big.recycle != "max-rss" || kids[1].recycle != "" {
		t.Fatalf("after rssEvery: recycle %q and %q, want max-rss and none (no size to read)", big.recycle, kids[1].recycle)
	}
	big.pid = pid

	starts := f.starts
	m.maintain(clk.now())
	repl := replacementOf(m, big.kid)
	if f.starts != starts+1 || repl == nil || repl == big.kid || big.state != ready {
		t.Fatalf("no replacement started beside the serving child (starts %d, old %v)", f.starts-starts, big.state)
	}
	m.recycle(clk.add(rssEvery))
	m.maintain(clk.now())
	if f.starts != starts+1 {
		t.Fatal("a second replacement was started while the first one starts")
	}
	// The replacement crashes before it is ready: the old child serves on,
	// and the slot tries again after its backoff.
	f.exit(repl.pid, exited(1))
	m.reap()
	if big.state != ready || len(m.targets) != 2 {
		t.Fatalf("the recycled child stopped serving when its replacement died: %v, %d targets", big.state, len(m.targets))
	}
	m.maintain(clk.add(backoffBase))
	repl = replacementOf(m, big.kid)
	if repl == nil || repl.state != starting {
		t.Fatal("no new replacement after the backoff")
	}
	f.ready(repl)
	if big.state != draining || repl.replaces != "max-rss" {
		t.Fatalf("after the replacement's ready: old %v, replacement replaces %q", big.state, repl.replaces)
	}
}

// replacementOf is the child started in old's slot beside it.
func replacementOf(m *Master, old *kid) *kid {
	for _, k := range m.kids {
		if k != old && k.slot == old.slot && k.gen == old.gen && k.state != draining {
			return k
		}
	}
	return nil
}
