package master

import (
	"errors"

	"github.com/procpool/procpool/ipc"
)

var errNoCell = errors.New("no free stats cell: too many children")

// allocCell takes a free stats cell (a memfd of its own) and zeroes it.
func (m *Master) allocCell() (int, bool) {
	if len(m.freeCells) == 0 {
		if m.nextCell == ipc.Cells {
			return 0, false
		}
		m.freeCells = append(m.freeCells, m.nextCell)
		m.nextCell++
	}
	c := m.freeCells[len(m.freeCells)-1]
	m.freeCells = m.freeCells[:len(m.freeCells)-1]
	if err := m.stats.Open(c); err != nil {
		m.freeCells = append(m.freeCells, c)
		m.log.Error("stats cell", "err", err)
		return 0, false
	}
	return c, true
}

// releaseCell folds a dead child's final counts into the totals, so the
// pool's counters never go backwards, and frees its cell.
func (m *Master) releaseCell(k *kid) {
	if k.cell < 0 {
		return
	}
	m.retired.Add(m.stats.Cell(k.cell).Load())
	m.freeCells = append(m.freeCells, k.cell)
	k.cell = -1
}

// outstanding is how many connections k holds or has yet to take: what the
// master sent it minus what it closed. In reuseport mode the child counts
// its own.
func (m *Master) outstanding(k *kid) uint64 {
	c := m.stats.Cell(k.cell)
	if m.cfg.Mode == ModeReuseport {
		return c.Accepted.Load() - c.Closed.Load()
	}
	return k.h.sent.Load() + uint64(len(k.batch)) - c.Closed.Load()
}

// hasRoom reports whether k may be given another connection, counting what
// was dealt to it in this turn.
func (m *Master) hasRoom(k *kid) bool {
	return m.cfg.MaxConns <= 0 || m.outstanding(k) < uint64(m.cfg.MaxConns)
}
