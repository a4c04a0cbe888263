package child

import (
	"time"

	"github.com/procpool/procpool/ipc"
)

// Hand-back: a child the master retires (reload, fewer workers, recycling)
// keeps its clients' connections open and gives them back to the master,
// which deals them to the serving children. A connection is given back once
// it is idle between requests, with whatever bytes of a next request were
// already read; one in the middle of a request or a response finishes where
// it is first. The responses of a retiring child are ordinary keep-alive
// responses: its clients never learn that it went away.

// retire starts the hand-back; grace bounds it: what is still held after it
// is closed.
func (l *loop) retire(grace time.Duration) {
	if l.retiring || l.draining.Load() {
		return
	}
	l.retiring = true
	l.retireBy = l.sess.clk.now.Add(grace).UnixNano()
	l.closeListener()
	for _, c := range l.conns {
		if c != nil && l.handBackable(c) {
			l.handBack(c)
		}
	}
	l.flushBack()
}

// retireWait shortens the loop's sleep while connections wait to go back
// (the master's channel was full: try again soon) or the grace period is
// about to end (close what is left on time, before the master kills us).
func (l *loop) retireWait(wait int) int {
	if !l.retiring {
		return wait
	}
	if len(l.back) > 0 {
		wait = min(wait, 10)
	}
	left := (l.retireBy-time.Now().UnixNano())/int64(time.Millisecond) + 1
	return int(max(0, min(int64(wait), left)))
}

// handBackable reports whether c is idle between requests, with at most a
// start of the next request read, so that another child can take it on.
func (l *loop) handBackable(c *conn) bool {
	return c.state == stReading && c.out == nil && !c.busy && !c.pending &&
		c.need == 0 && !c.body.on && len(c.in)+c.carryLen() <= ipc.MaxData
}

// handBack takes c out of the poll set and queues it for the master.
func (l *loop) handBack(c *conn) {
	c.carryProxy() // its client, when a balancer's header named it (proxyproto.go)
	if c.polled {
		l.poller.Delete(c.fd) // the master and the next child hold the same file
		c.polled = false
	}
	c.setState(stHanded)
	l.back = append(l.back, c)
}

// flushBack sends the queued connections to the master: those without bytes
// in batches, the others one a message with their bytes. What the channel
// cannot take now waits for the next turn.
func (l *loop) flushBack() {
	if len(l.back) == 0 {
		return
	}
	msg := ipc.Msg{Cmd: ipc.CmdFds, Pid: int32(l.pid), Slot: int32(l.cfg.Slot)}
	rest := l.back[:0]
	batch := l.fds[:0]
	var sent []*conn
	full := false
	flush := func() {
		if len(batch) == 0 || full {
			return
		}
		if l.ch.Send(msg, batch) != nil {
			full = true
			return
		}
		sent = append(sent, l.sentBatch...)
		batch, l.sentBatch = batch[:0], l.sentBatch[:0]
	}
	for _, c := range l.back {
		switch {
		case full:
			rest = append(rest, c)
		case len(c.in) > 0:
			if l.ch.SendConn(msg, c.fd, c.in) != nil {
				full = true
				rest = append(rest, c)
				continue
			}
			sent = append(sent, c)
		default:
			batch = append(batch, c.fd)
			l.sentBatch = append(l.sentBatch, c)
			if len(batch) == ipc.MaxFds {
				flush()
			}
		}
	}
	flush()
	if full {
		rest = append(rest, l.sentBatch...) // the last batch did not go
		l.sentBatch = l.sentBatch[:0]
	}
	l.back = rest
	for _, c := range sent {
		l.cfg.Stats.HandedBack.Add(1)
		l.closeConn(c) // the master holds the connection now; this closes our fd only
	}
}
