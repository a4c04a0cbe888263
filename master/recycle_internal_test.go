package master

import (
	"os"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
)

// A child past one of its limits is recycled: a replacement is started in
// its slot while it keeps serving, and once the replacement is ready the old
// child is retired with hand-back; the replacement says why.
func TestRecycleReplacesFirst(t *testing.T) {
	for _, c := range []struct {
		reason string
		cfg    Config // no jitter: the exact limits
		pass   func(m *Master, k *kid, clk *clock)
	}{
		{"max-requests", Config{MaxRequests: 100}, func(m *Master, k *kid, _ *clock) {
			m.stats.Cell(k.cell).Requests.Store(100)
		}},
		{"max-lifetime", Config{MaxLifetime: time.Hour}, func(_ *Master, _ *kid, clk *clock) {
			clk.add(time.Hour)
		}},
	} {
		t.Run(c.reason, func(t *testing.T) {
			m, f, kids := newFakeMaster(t, 1, c.cfg)
			clk := withClock(m)
			old := kids[0].kid
			old.started, old.lim = clk.now(), m.drawLimits()
			m.recycle(clk.now())
			if old.recycle != "" {
				t.Fatalf("recycled before its limit: %q", old.recycle)
			}
			c.pass(m, old, clk)
			m.recycle(clk.now())
			if old.recycle != c.reason {
				t.Fatalf("recycle %q, want %q", old.recycle, c.reason)
			}
			m.maintain(clk.now())
			repl := replacementOf(m, old)
			if repl == nil || old.state != ready {
				t.Fatalf("no replacement started beside the serving child (replacement %v, old state %v)", repl, old.state)
			}
			f.ready(repl)
			if old.state != draining || repl.replaces != c.reason {
				t.Fatalf("after the replacement's ready: old %v, replacement replaces %q", old.state, repl.replaces)
			}
			if _, cmds := kids[0].take(t); len(cmds) != 1 || cmds[0] != ipc.CmdRetire {
				t.Fatalf("the old child was told %v, want retire (hand-back)", cmds)
			}
		})
	}
}

// Jitter lowers each child's limits by at most its share, never raises them.
func TestRecycleJitter(t *testing.T) {
	m, _, _ := newFakeMaster(t, 1, Config{MaxRequests: 1000, MaxLifetime: time.Hour, MaxRSS: 1 << 30, RecycleJitter: 0.1})
	for range 100 {
		l := m.drawLimits()
		if l.requests < 900 || l.requests > 1000 || l.lifetime < 54*time.Minute || l.lifetime > time.Hour ||
			l.rss < 9<<30/10 || l.rss > 1<<30 {
			t.Fatalf("limits %+v outside 90-100%% of the configured ones", l)
		}
	}
}

// A retired child still alive a second after its grace is killed.
func TestOverdueRetiredChildKilled(t *testing.T) {
	m, f, kids := newFakeMaster(t, 2, Config{Grace: 2 * time.Second})
	clk := withClock(m)
	m.retire(kids[0].kid)
	m.overdue(clk.add(m.cfg.Grace))
	if len(f.killed(kids[0].pid)) != 0 {
		t.Fatal("killed inside its grace period")
	}
	m.overdue(clk.add(retireSlack + time.Millisecond))
	if got := f.killed(kids[0].pid); len(got) != 1 || !kids[0].killed {
		t.Fatalf("a second past its grace: signals %v", got)
	}
	if len(f.killed(kids[1].pid)) != 0 {
		t.Fatal("a serving child was killed")
	}
}

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
