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

// What a child publishes about the request it runs, inline and in a pool.
func TestCellCurrentRequest(t *testing.T) {
	var c ipc.Cell
	if _, _, _, ok := c.Current(); ok || c.Running() != 0 {
		t.Fatal("a fresh cell shows a request")
	}
	claimed := c.Begin(42, []byte("GET"), []byte("/a/very/long/path/that/does/not/fit/in/forty-eight/bytes"), false)
	m, p, start, ok := c.Current()
	if !claimed || !ok || m != "GET" || start != 42 || len(p) != 48 || c.Running() != 1 {
		t.Fatalf("inline: %q %q %d %v, running %d", m, p, start, ok, c.Running())
	}
	c.End(claimed, false)
	if _, _, _, ok := c.Current(); ok || c.Running() != 0 {
		t.Fatal("the request is still shown after End")
	}
	// Pool workers: the first claims the slot, a second only counts.
	first := c.Begin(1, []byte("POST"), []byte("/x"), true)
	second := c.Begin(2, []byte("PUT"), []byte("/y"), true)
	if m, _, _, _ := c.Current(); !first || second || m != "POST" || c.Running() != 2 {
		t.Fatalf("pool: first %v second %v, shows %q, running %d", first, second, m, c.Running())
	}
	c.End(first, true)
	c.End(second, true)
	if c.Running() != 0 {
		t.Fatalf("pool: running %d after both ended", c.Running())
	}
}
