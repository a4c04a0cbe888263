package ipc_test

import (
	"testing"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// A child maps its own cell and nothing else: what it writes there is what
// the master reads for that child, and no other child's counters are within
// its reach (its memfd is one page, one cell).
func TestCellIsolation(t *testing.T) {
	s, err := ipc.NewStats()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 2 {
		if err := s.Open(i); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Dup(s.Fd(1)) // what the child inherits
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size != int64(unix.Getpagesize()) {
		t.Fatalf("the child's memfd has %d bytes (%v), want one page", st.Size, err)
	}
	c, err := ipc.OpenCell(fd)
	if err != nil {
		t.Fatal(err)
	}
	c.Closed.Store(1 << 40) // a child that lies about itself
	if got := s.Cell(1).Closed.Load(); got != 1<<40 {
		t.Errorf("master reads %d for the child's cell, want what it wrote", got)
	}
	if got := s.Cell(0).Closed.Load(); got != 0 {
		t.Errorf("another child's cell changed to %d", got)
	}
	// A cell given to the next child starts from zero.
	if err := s.Open(1); err != nil || s.Cell(1).Closed.Load() != 0 {
		t.Errorf("reopened cell: Closed %d, %v; want 0", s.Cell(1).Closed.Load(), err)
	}
}
