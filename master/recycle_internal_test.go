package master

import (
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
			var repl *kid
			for _, k := range m.kids {
				if k != old && k.slot == 0 {
					repl = k
				}
			}
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
