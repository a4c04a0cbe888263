package master

import (
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Behind a load balancer: the admin listener answers GET /readyz with 200
// while the master takes new work (its first generation of children is
// ready and no stop has begun) and 503 from the moment a stop begins; GET
// /healthz with 200 as long as the master runs.
//
// With Config.ShutdownDelay, SIGTERM and SIGQUIT do not stop at once:
// readiness goes to 503, the children are told (ipc.CmdGoAway) to answer
// every request with Connection: close, and the master keeps accepting and
// serving for the delay, so that the balancer sees the 503, takes the
// server out of rotation and moves its keep-alive connections elsewhere
// while nothing is refused yet. Then the graceful stop proceeds as without
// a delay. SIGINT still stops at once.

// lbState is what the master keeps of it; ready is read by the admin
// listener's goroutines, the rest belongs to the loop.
type lbState struct {
	ready atomic.Bool
	until time.Time    // end of the shutdown delay; zero when none began
	told  map[int]bool // children told to go away, by pid
}

// delaying reports whether the shutdown delay runs.
func (m *Master) delaying() bool { return !m.lb.until.IsZero() && !m.stopBegun() }

// stopAfterDelay is SIGTERM and SIGQUIT: the shutdown delay, or, without
// one, the graceful stop itself.
func (m *Master) stopAfterDelay() {
	if m.cfg.ShutdownDelay <= 0 || m.stopBegun() {
		m.stop(graceful)
		return
	}
	if !m.lb.until.IsZero() {
		return // a second signal changes nothing
	}
	m.lb.until = m.now().Add(m.cfg.ShutdownDelay)
	m.lb.ready.Store(false)
	notify("STOPPING=1")
	m.log.Info("shutdown delay: not ready, serving with Connection: close until the graceful stop",
		"shutdown_delay", m.cfg.ShutdownDelay)
	m.goAway()
}

// goAway tells every ready child that has not heard it yet to close
// connections after their next answer; a child that becomes ready during
// the delay is told on the next turn.
func (m *Master) goAway() {
	if m.lb.told == nil {
		m.lb.told = map[int]bool{}
	}
	for _, k := range m.kids {
		if k.state != ready || k.ch == nil || m.lb.told[k.pid] {
			continue
		}
		err := k.ch.Send(ipc.Msg{Cmd: ipc.CmdGoAway, Pid: int32(os.Getpid()), Slot: int32(k.slot)}, nil)
		if err == nil {
			m.lb.told[k.pid] = true
		}
	}
}

// lbTurn runs once a turn of the loop: it keeps readiness current and ends
// the shutdown delay when it is over.
func (m *Master) lbTurn(now time.Time) {
	if m.delaying() {
		if !now.Before(m.lb.until) {
			m.log.Info("shutdown delay over")
			m.stop(graceful)
		} else {
			m.goAway()
		}
	}
	m.lb.ready.Store(!m.announce && !m.stopBegun() && m.lb.until.IsZero())
}

// lbDue is when the loop must wake for the end of the shutdown delay.
func (m *Master) lbDue() time.Time {
	if m.delaying() {
		return m.lb.until
	}
	return time.Time{}
}

// duringDelay filters the signals the master acts on while the shutdown
// delay runs: it is on its way out, so only reopening the logs still applies
// (stops are handled before).
func duringDelay(s ipc.Signals) ipc.Signals {
	return s & (1 << uint(unix.SIGUSR1))
}

func (st *lbState) serveReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if st.ready.Load() {
		w.Write([]byte("ready\n"))
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	w.Write([]byte("not ready\n"))
}

func serveHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte("ok\n"))
}

// clientOf is the client of the request a child published, for /status;
// "" when it does not know it.
func clientOf(cell *ipc.Cell) string {
	if c := cell.CurrentClient(); c.IsValid() {
		return c.String()
	}
	return ""
}

// clientDesc is the same for a log line: nothing when unknown.
func clientDesc(cell *ipc.Cell) []any {
	if c := clientOf(cell); c != "" {
		return []any{"client", c}
	}
	return nil
}
