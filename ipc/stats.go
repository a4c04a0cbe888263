package ipc

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Counters live in shared memory rather than travelling as messages: the
// master creates one memfd per child (a page, holding one Cell), maps it,
// and passes it to the child, which maps it too. A child sees its own cell
// and nothing else: one child cannot make another look full, busy or dead to
// the master, which admits and deals by these counters. A child pays one
// uncontended atomic add per event it counts and never a syscall;
// the master reads any cell at any time, even of a child that is stuck, and
// after a child dies its last counts are still there to be folded into the
// totals. Messages every second would cost each child a timer and a send,
// and would lag behind the test that wants exact numbers.

// CellSize is the most a Cell may take.
const CellSize = 256

// Cells is how many cells the master may hold at once: enough for the
// largest pool twice over (old and new generation during a reload) with
// room for respawns.
const Cells = 4096

// cellBytes is the size of a cell's memfd: a page, the unit of mapping.
var cellBytes = os.Getpagesize()

// Cell holds one child's counters. Every field is updated atomically, from
// the child's loop and its pool workers, and read by the master.
type Cell struct {
	Pid         atomic.Int64
	Accepted    atomic.Uint64 // connections the child took
	Closed      atomic.Uint64 // connections it closed; open = Accepted - Closed
	Requests    atomic.Uint64
	BytesIn     atomic.Uint64
	BytesOut    atomic.Uint64
	Responses   [6]atomic.Uint64 // by status class: [2] counts 2xx; [0] is unused
	ParseErrors atomic.Uint64
	Timeouts    atomic.Uint64

	// What the child is doing now, for the master's stall rule and its
	// watchdog. Turns is the child's heartbeat: its loop stores a new value
	// every turn, so a child whose loop is blocked (a long inline handler, a
	// stop, a page-fault storm) shows no change. InFlight counts the pool
	// workers' requests in a handler (Running reads it). ReqStart is when the
	// request described by ReqMethod and ReqPath entered its handler (unix
	// ns; 0: none; -1: a pool worker is writing it): in inline mode the one
	// request the loop runs, in pool mode the first of those running that
	// claimed the slot.
	Turns      atomic.Uint64
	HandedBack atomic.Uint64 // connections given back to the master when retired
	// Fresh counts the connections taken from clients, not handed on from
	// another child (Accepted counts both): summed over the pool it is the
	// connections the server accepted, and it never goes backwards while a
	// connection moves between children.
	Fresh     atomic.Uint64
	InFlight  atomic.Int64
	ReqStart  atomic.Int64
	ReqMethod [8]byte
	ReqPath   [48]byte
	// ReqClient is the request's client, when the child knows it (a PROXY
	// header, or the access log, had it look): its address as 16 bytes
	// (IPv4 mapped) and its port, big-endian; zero when unknown.
	ReqClient [18]byte
}

var _ [CellSize - unsafe.Sizeof(Cell{})]byte // a Cell must fit its slot

// Stats is the master's side of the children's cells: cell i is a memfd of
// its own, created on first use and kept mapped, for the next child of that
// cell, until Close (the admin goroutines may read a cell a moment after its
// child is gone).
type Stats struct {
	fds [Cells]int
	mem [Cells][]byte
}

// NewStats returns an empty set of cells.
func NewStats() (*Stats, error) { return &Stats{}, nil }

// Open makes cell i ready for a new child: created and mapped the first
// time, zeroed after that.
func (s *Stats) Open(i int) error {
	if s.mem[i] != nil {
		s.Reset(i)
		return nil
	}
	fd, err := unix.MemfdCreate("procpool-cell", unix.MFD_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("memfd_create", err)
	}
	if err := unix.Ftruncate(fd, int64(cellBytes)); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("ftruncate", err)
	}
	mem, err := mapCell(fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	s.fds[i], s.mem[i] = fd, mem
	return nil
}

// OpenCell maps, in a child, the cell the master passed it as fd: its own and
// only that.
func OpenCell(fd int) (*Cell, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, os.NewSyscallError("fstat", err)
	}
	if st.Size != int64(cellBytes) {
		return nil, fmt.Errorf("ipc: stats cell has %d bytes, want %d", st.Size, cellBytes)
	}
	mem, err := mapCell(fd)
	if err != nil {
		return nil, err
	}
	unix.Close(fd) // the mapping stays
	return (*Cell)(unsafe.Pointer(&mem[0])), nil
}

func mapCell(fd int) ([]byte, error) {
	mem, err := unix.Mmap(fd, 0, cellBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return mem, nil
}

// Fd is cell i's memfd, to pass to its child.
func (s *Stats) Fd(i int) int { return s.fds[i] }

// Cell returns cell i, which Open must have made.
func (s *Stats) Cell(i int) *Cell {
	return (*Cell)(unsafe.Pointer(&s.mem[i][0]))
}

// Reset zeroes cell i before it is given to a new child. Its last child is
// gone (its counts were folded into the totals), so nobody writes it now.
func (s *Stats) Reset(i int) { clear(s.mem[i]) }

// Begin records that a request entered its handler at now (unix ns). It
// claims the request slot when it is free and reports whether it did; the
// caller passes that to End. shared says that other goroutines of the child
// (pool workers) may call Begin at the same time. The loop of an inline
// child is alone: it pays one store here and one in End, on every request.
// A reader (Current) takes the bytes as one request's when it sees the same
// start before and after them, so now must differ from the previous
// request's start: two requests served in the same nanosecond would let a
// reader take bytes torn between them.
func (c *Cell) Begin(now int64, method, path []byte, shared bool) bool {
	return c.BeginFrom(now, method, path, netip.AddrPort{}, shared)
}

// BeginFrom is Begin for a request whose client is known.
func (c *Cell) BeginFrom(now int64, method, path []byte, client netip.AddrPort, shared bool) bool {
	if shared {
		c.InFlight.Add(1)
		if !c.ReqStart.CompareAndSwap(0, -1) {
			return false // an older request holds the slot
		}
	}
	// Short names are zero-padded, long ones cut: this is for a log line.
	c.ReqMethod = [8]byte{}
	copy(c.ReqMethod[:], method)
	n := copy(c.ReqPath[:], path)
	clear(c.ReqPath[n:])
	c.ReqClient = [18]byte{}
	if client.IsValid() {
		a := client.Addr().As16()
		copy(c.ReqClient[:], a[:])
		binary.BigEndian.PutUint16(c.ReqClient[16:], client.Port())
	}
	c.ReqStart.Store(now)
	return true
}

// End records that a request Begin counted has left its handler.
func (c *Cell) End(claimed, shared bool) {
	if claimed {
		c.ReqStart.Store(0)
	}
	if shared {
		c.InFlight.Add(-1)
	}
}

// Running is how many requests the child has in a handler: the pool's count,
// or the inline loop's one request when it published one.
func (c *Cell) Running() int64 {
	if n := c.InFlight.Load(); n > 0 {
		return n
	}
	if c.ReqStart.Load() != 0 {
		return 1
	}
	return 0
}

// Current is the request a child published with Begin: its method, path and
// start (unix ns). ok is false when none is running or it changed while
// being read.
func (c *Cell) Current() (method, path string, start int64, ok bool) {
	start = c.ReqStart.Load()
	if start <= 0 {
		return "", "", 0, false
	}
	m, p := c.ReqMethod, c.ReqPath
	if c.ReqStart.Load() != start {
		return "", "", 0, false
	}
	return cstring(m[:]), cstring(p[:]), start, true
}

// CurrentClient is the client of the request Current describes; invalid
// when none is running, it changed while being read, or it is unknown.
func (c *Cell) CurrentClient() netip.AddrPort {
	start := c.ReqStart.Load()
	if start <= 0 {
		return netip.AddrPort{}
	}
	b := c.ReqClient
	if c.ReqStart.Load() != start || b == [18]byte{} {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])).Unmap(), binary.BigEndian.Uint16(b[16:]))
}

func cstring(b []byte) string {
	for i, x := range b {
		if x == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Close unmaps every cell and closes its memfd.
func (s *Stats) Close() error {
	for i, mem := range s.mem {
		if mem != nil {
			unix.Munmap(mem)
			unix.Close(s.fds[i])
			s.mem[i] = nil
		}
	}
	return nil
}

// Snapshot is a plain copy of a Cell's counters.
type Snapshot struct {
	Accepted, Closed, Requests, BytesIn, BytesOut uint64
	Responses                                     [6]uint64
	ParseErrors, Timeouts                         uint64
	HandedBack, Fresh                             uint64
}

// Load copies the counters.
func (c *Cell) Load() Snapshot {
	s := Snapshot{
		Accepted: c.Accepted.Load(), Closed: c.Closed.Load(), Requests: c.Requests.Load(),
		BytesIn: c.BytesIn.Load(), BytesOut: c.BytesOut.Load(),
		ParseErrors: c.ParseErrors.Load(), Timeouts: c.Timeouts.Load(),
		HandedBack: c.HandedBack.Load(), Fresh: c.Fresh.Load(),
	}
	for i := range c.Responses {
		s.Responses[i] = c.Responses[i].Load()
	}
	return s
}

// Add sums o into s.
func (s *Snapshot) Add(o Snapshot) {
	s.Accepted += o.Accepted
	s.Closed += o.Closed
	s.Requests += o.Requests
	s.BytesIn += o.BytesIn
	s.BytesOut += o.BytesOut
	for i := range s.Responses {
		s.Responses[i] += o.Responses[i]
	}
	s.ParseErrors += o.ParseErrors
	s.Timeouts += o.Timeouts
	s.HandedBack += o.HandedBack
	s.Fresh += o.Fresh
}
