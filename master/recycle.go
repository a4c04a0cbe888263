package master

import (
	"math/rand/v2"
	"time"
)

// Recycling: a child that has answered -max-requests requests, lived
// -max-lifetime, or grown past -max-rss is replaced the way gunicorn, uWSGI
// and php-fpm users expect of a guard against leaks, but without a dip: a
// replacement is started in its slot first, and once it is ready the old
// child is retired and hands its connections back. Each child's limits are
// drawn below the configured ones by up to -recycle-jitter, so that the
// children of one generation do not all recycle at the same moment.

// DefaultRecycleJitter is the default -recycle-jitter.
const DefaultRecycleJitter = 0.1

// rssEvery is how often the resident size of each child is read when
// -max-rss is set: a read of /proc per child, not something for every turn.
const rssEvery = time.Second

// requestsEvery is how often a master that has nothing else to do looks at
// the children's request counts when -max-requests is set: children do not
// announce requests, so a child may answer a few more than its limit.
const requestsEvery = 50 * time.Millisecond

// limits are one child's recycling thresholds, with its jitter applied;
// zero means none.
type limits struct {
	requests uint64
	lifetime time.Duration
	rss      int64
}

// drawLimits draws a new child's thresholds.
func (m *Master) drawLimits() limits {
	j := func() float64 { return 1 - m.cfg.RecycleJitter*rand.Float64() }
	return limits{
		requests: uint64(float64(m.cfg.MaxRequests) * j()),
		lifetime: time.Duration(float64(m.cfg.MaxLifetime) * j()),
		rss:      int64(float64(m.cfg.MaxRSS) * j()),
	}
}

// recycle marks the serving children that passed one of their limits; a
// marked child gets a replacement (maintain), and is retired when that is
// ready (replaced).
func (m *Master) recycle(now time.Time) {
	checkRSS := m.cfg.MaxRSS > 0 && !now.Before(m.nextRSS)
	if checkRSS {
		m.nextRSS = now.Add(rssEvery)
	}
	for _, k := range m.kids {
		if k.state != ready || k.recycle != "" || k.cell < 0 {
			continue
		}
		switch {
		case k.lim.requests > 0 && m.stats.Cell(k.cell).Requests.Load() >= k.lim.requests:
			k.recycle = "max-requests"
		case k.lim.lifetime > 0 && now.Sub(k.started) >= k.lim.lifetime:
			k.recycle = "max-lifetime"
		case checkRSS && k.lim.rss > 0 && rss(k.pid) >= k.lim.rss:
			k.recycle = "max-rss"
		default:
			continue
		}
		m.log.Info("recycling child: starting its replacement", "pid", k.pid, "slot", k.slot, "gen", k.gen, "reason", k.recycle)
		m.publish()
	}
}

// replaced retires the children that the newly ready k replaces.
func (m *Master) replaced(k *kid) {
	for _, old := range m.kids {
		if old != k && old.slot == k.slot && old.gen == k.gen && old.recycle != "" && old.state != draining {
			k.replaces = old.recycle
			m.log.Info("child recycled", "pid", old.pid, "slot", old.slot, "reason", old.recycle, "replacement", k.pid)
			m.retire(old)
		}
	}
}

// nextRecycleCheck is when recycle must look again: the earliest lifetime
// limit, and the next read of resident sizes.
func (m *Master) nextRecycleCheck(consider func(time.Time)) {
	if m.cfg.MaxRSS > 0 {
		consider(m.nextRSS)
	}
	if m.cfg.MaxRequests > 0 {
		consider(m.now().Add(requestsEvery))
	}
	for _, k := range m.kids {
		if k.state == ready && k.recycle == "" && k.lim.lifetime > 0 {
			consider(k.started.Add(k.lim.lifetime))
		}
	}
}
