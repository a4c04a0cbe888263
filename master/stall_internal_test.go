package master

// Unit tests of the master's dealing decisions: the stall rule, take-back,
// and the dispatch orders. Children here are channels with nobody at the
// far end: the test reads and writes the child's end itself, and moves the
// child's counters in the shared stats cell by hand. No process is forked.

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

const ms = int64(time.Millisecond)

func TestJudge(t *testing.T) {
	const stall = 20 * time.Millisecond
	type look struct {
		at      int64 // ms
		beat    uint64
		backlog uint64
		stalled bool // after this look
		became  bool
		resumed bool
	}
	cases := []struct {
		name  string
		looks []look
	}{
		{"an idle child is never stalled, however long it sleeps", []look{
			{at: 0}, {at: 1000}, {at: 60000},
		}},
		{"a backlog taken within the stall time is no stall", []look{
			{at: 0}, {at: 1, backlog: 1}, {at: 15, backlog: 1}, {at: 18, beat: 1}, {at: 100, beat: 1},
		}},
		{"a backlog with no beat for the stall time is a stall", []look{
			{at: 0}, {at: 5, backlog: 2}, {at: 19, backlog: 2},
			{at: 20, backlog: 2, stalled: true, became: true},
			{at: 500, backlog: 0, stalled: true}, // taken back: still stalled until it beats
			{at: 900, beat: 1, resumed: true},
		}},
		{"the clock starts when the child last owed nothing, not at its last beat", []look{
			{at: 0, beat: 7}, {at: 4990, beat: 7}, {at: 5000, beat: 7, backlog: 1}, {at: 5009, beat: 7, backlog: 1},
			{at: 5010, beat: 7, backlog: 1, stalled: true, became: true},
		}},
		{"a beat restarts the clock", []look{
			{at: 0}, {at: 1, backlog: 3}, {at: 15, beat: 1, backlog: 2}, {at: 30, beat: 1, backlog: 2},
			{at: 35, beat: 1, backlog: 2, stalled: true, became: true},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var h health
			for i, l := range c.looks {
				became, resumed := h.judge(l.beat, l.backlog, l.at*ms, stall)
				if became != l.became || resumed != l.resumed || h.stalled.Load() != l.stalled {
					t.Fatalf("look %d (%+v): became %v resumed %v stalled %v", i, l, became, resumed, h.stalled.Load())
				}
			}
		})
	}
	var h health
	h.judge(0, 5, 0, 0)
	if became, _ := h.judge(0, 5, 3600e3*ms, 0); became {
		t.Error("with the rule off (stall 0) a child was called stalled")
	}
}

// testKid is a child as the master sees it, whose far end the test holds.
type testKid struct {
	*kid
	far *ipc.Channel // the child's end, as the child would read it
}

// newTestMaster is a master with n ready children of one generation and no
// listener, in fdpass mode. Its log is discarded.
func newTestMaster(t *testing.T, n int, cfg Config) (*Master, []testKid) {
	t.Helper()
	m, _, kids := newFakeMaster(t, n, cfg)
	return m, kids
}

// newFakeMaster is newTestMaster with the fake processes behind it: its
// children were spawned through fakeSys, and said ready.
func newFakeMaster(t *testing.T, n int, cfg Config) (*Master, *fakeSys, []testKid) {
	t.Helper()
	cfg.Mode, cfg.Workers = ModeFdpass, n
	cfg.setDefaults()
	m := &Master{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), lfd: -1, null: -1, upgradeFd: -1,
		addr: "127.0.0.1:8080", fds: make([]int, 0, ipc.MaxFds), peerCh: ipc.NewChannel(-1), now: time.Now,
		carried: map[int][]byte{}}
	var err error
	if m.stats, err = ipc.NewStats(); err != nil {
		t.Fatal(err)
	}
	if m.poller, err = epoll.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, fd := range m.queue {
			unix.Close(fd)
		}
		for _, k := range m.kids {
			k.closeChannel()
		}
		if m.upgradeFd >= 0 {
			unix.Close(m.upgradeFd)
		}
		m.poller.Close()
		m.stats.Close()
	})
	f := newFakeSys(t, m)
	m.sys = f.system()
	m.setWorkers(cfg.Workers)
	m.maintain(m.now())
	var kids []testKid
	for _, k := range m.kids {
		f.ready(k)
		kids = append(kids, f.child(k))
	}
	return m, f, kids
}

// conns makes n connected sockets and returns the ends the master would
// have accepted; the test keeps the other ends until it is done.
func conns(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for range n {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeLater(t, p[1])
		fds = append(fds, p[0])
	}
	return fds
}

func closeLater(t *testing.T, fd int) { t.Cleanup(func() { unix.Close(fd) }) }

// take reads what is queued for a child the way the child would: the fds it
// got (closed at cleanup) and the commands, in order.
func (k testKid) take(t *testing.T) (fds int, cmds []ipc.Cmd) {
	t.Helper()
	buf := make([]int, 0, ipc.MaxFds)
	for {
		msg, got, err := k.far.Recv(buf)
		if err == ipc.ErrAgain {
			return fds, cmds
		}
		if err != nil {
			t.Fatalf("child %d: %v", k.slot, err)
		}
		for _, fd := range got {
			closeLater(t, fd)
		}
		fds += len(got)
		if msg.Cmd != ipc.CmdFds {
			cmds = append(cmds, msg.Cmd)
		}
	}
}

// dealt is how many connections each child finds in its channel.
func dealt(t *testing.T, kids []testKid) []int {
	t.Helper()
	var got []int
	for _, k := range kids {
		n, _ := k.take(t)
		got = append(got, n)
	}
	return got
}

// accept moves a child's counters as if it had taken n connections.
func (m *Master) accepted(k testKid, n uint64) {
	c := m.stats.Cell(k.cell)
	c.Accepted.Add(n)
	c.Turns.Add(1)
}

func TestDispatchRoundRobin(t *testing.T) {
	m, kids := newTestMaster(t, 3, Config{})
	m.queue = conns(t, 9)
	m.dispatch()
	for _, k := range kids {
		if n, _ := k.take(t); n != 3 {
			t.Errorf("child %d got %d of 9, want 3", k.slot, n)
		}
	}
}

// A stalled child is skipped; its share goes to the others.
func TestDispatchSkipsStalled(t *testing.T) {
	m, kids := newTestMaster(t, 3, Config{})
	kids[1].h.stalled.Store(true)
	m.queue = conns(t, 10)
	m.dispatch()
	if got := dealt(t, kids); got[1] != 0 || got[0]+got[2] != 10 || got[0] != 5 {
		t.Errorf("dealt %v to children whose second is stalled, want [5 0 5]", got)
	}
}

// least gives each connection to the child with the fewest outstanding
// (open + queued), ties in round-robin order.
func TestDispatchLeast(t *testing.T) {
	m, kids := newTestMaster(t, 3, Config{Dispatch: DispatchLeast})
	// Child 0 holds 4 open connections, child 1 holds 1, child 2 none.
	m.queue = conns(t, 5)
	kids[0].batch = append(kids[0].batch, m.queue[:4]...)
	kids[1].batch = append(kids[1].batch, m.queue[4])
	m.queue = nil
	for _, k := range kids[:2] {
		sent, _ := m.sendTo(k.kid, nil)
		closeSent(sent)
	}
	for _, k := range kids {
		n, _ := k.take(t)
		m.accepted(k, uint64(n))
	}
	m.queue = conns(t, 6)
	m.dispatch()
	got := dealt(t, kids)
	// From loads 4, 1, 0 the six go 2, 1, 2, 1, 2, 1: ties are broken in
	// round-robin order, and child 0 is never the least loaded.
	if got[0] != 0 || got[1]+got[2] != 6 || got[1] != 3 || got[2] != 3 {
		t.Errorf("least dealt %v to children holding [4 1 0], want [0 3 3]", got)
	}
}

// A child with a backlog and no progress for the stall time is stalled: what
// is queued for it is taken back and dealt to the others, in the order it was
// accepted, and it is pinged. Commands queued for it are sent again. Its
// first beat after that ends the stall.
func TestObserveTakesBackFromStalled(t *testing.T) {
	m, kids := newTestMaster(t, 2, Config{Stall: 20 * time.Millisecond})
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	m.observe(now)
	m.queue = conns(t, 6)
	want := inodes(t, m.queue) // the master closes its copies once sent
	m.dispatch()
	m.tell(kids[0].kid, ipc.CmdReopen)
	// Child 1 takes its three; child 0 does not run.
	if n, _ := kids[1].take(t); n != 3 {
		t.Fatalf("child 1 got %d, want 3", n)
	}
	m.accepted(kids[1], 3)
	m.observe(now.Add(10 * time.Millisecond))
	if kids[0].h.stalled.Load() {
		t.Fatal("stalled before the stall time passed")
	}
	m.observe(now.Add(25 * time.Millisecond))
	if !kids[0].h.stalled.Load() {
		t.Fatal("child 0 not stalled after 25 ms with a backlog and no beat")
	}
	if len(m.queue) != 3 || kids[0].h.takenBack.Load() != 3 || m.backlog(kids[0].kid) != 0 {
		t.Fatalf("took back %d (queue %d, backlog %d), want 3", kids[0].h.takenBack.Load(), len(m.queue), m.backlog(kids[0].kid))
	}
	// Round-robin gave child 0 the first, third and fifth connection.
	if got := inodes(t, m.queue); got[0] != want[0] || got[1] != want[2] || got[2] != want[4] {
		t.Errorf("taken back %v, want child 0's share of %v in order", got, want)
	}
	if n, cmds := kids[0].take(t); n != 0 || len(cmds) != 2 || cmds[0] != ipc.CmdReopen || cmds[1] != ipc.CmdPing {
		t.Fatalf("child 0's channel after the take-back: %d fds, commands %v; want none, [reopen ping]", n, cmds)
	}
	m.dispatch()
	if n, _ := kids[1].take(t); n != 3 {
		t.Fatalf("the taken-back connections went elsewhere: child 1 got %d, want 3", n)
	}
	if n, _ := kids[0].take(t); n != 0 {
		t.Fatalf("a stalled child was dealt %d connections", n)
	}
	m.stats.Cell(kids[0].cell).Turns.Add(1)
	m.observe(now.Add(2 * time.Second))
	if kids[0].h.stalled.Load() {
		t.Fatal("still stalled after a beat")
	}
}

// inodes names sockets in a way that survives their fds being closed and
// the numbers reused.
func inodes(t *testing.T, fds []int) []uint64 {
	t.Helper()
	var l []uint64
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		l = append(l, st.Ino)
	}
	return l
}

// Retiring a child takes back what is queued for it, so its retire command
// fits in the channel and nothing queued waits for a child on its way out.
func TestRetireTakesBack(t *testing.T) {
	m, kids := newTestMaster(t, 2, Config{Stall: -1})
	m.queue = conns(t, 4)
	m.dispatch()
	m.retire(kids[0].kid)
	if n, cmds := kids[0].take(t); n != 0 || len(cmds) != 1 || cmds[0] != ipc.CmdRetire {
		t.Fatalf("retired child's channel: %d fds, %v; want only retire", n, cmds)
	}
	m.dispatch()
	if n, _ := kids[1].take(t); n != 4 {
		t.Fatalf("the other child got %d, want all 4", n)
	}
}

// A retired child hands connections back, some with bytes it had read; the
// master deals them to the serving children, each with its own bytes. A
// serving child that sends connections has them closed.
func TestHandBackDealsCarriedBytes(t *testing.T) {
	m, kids := newTestMaster(t, 2, Config{Stall: -1})
	m.retire(kids[0].kid)
	kids[0].take(t)
	plain, carried := conns(t, 1)[0], conns(t, 1)[0]
	if err := kids[0].far.Send(ipc.Msg{Cmd: ipc.CmdFds}, []int{plain}); err != nil {
		t.Fatal(err)
	}
	if err := kids[0].far.SendConn(ipc.Msg{}, carried, []byte("GET / HT")); err != nil {
		t.Fatal(err)
	}
	want := inodes(t, []int{plain, carried})
	m.onChannel(kids[0].kid, &epoll.Event{Events: epoll.In})
	if len(m.queue) != 2 || kids[0].handedBack != 2 {
		t.Fatalf("queue %d, handed back %d; want 2, 2", len(m.queue), kids[0].handedBack)
	}
	m.dispatch()
	buf := make([]int, 0, ipc.MaxFds)
	var got []uint64
	for {
		msg, fds, err := kids[1].far.Recv(buf)
		if err == ipc.ErrAgain {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			closeLater(t, fd)
		}
		got = append(got, inodes(t, fds)...)
		// Every handed-back connection goes on as CmdConn (so the child
		// does not count it as new), each with its own bytes.
		wantData := map[uint64]string{want[0]: "", want[1]: "GET / HT"}[inodes(t, fds)[0]]
		if msg.Cmd != ipc.CmdConn || string(kids[1].far.Data()) != wantData {
			t.Errorf("got %v with %q, want conn with %q", msg.Cmd, kids[1].far.Data(), wantData)
		}
	}
	if len(got) != 2 || len(m.carried) != 0 {
		t.Fatalf("serving child got %d connections (carried left %d), want both", len(got), len(m.carried))
	}

	stray := conns(t, 1)[0]
	kids[1].far.Send(ipc.Msg{Cmd: ipc.CmdFds}, []int{stray})
	m.onChannel(kids[1].kid, &epoll.Event{Events: epoll.In})
	if len(m.queue) != 0 {
		t.Fatal("a serving child's connections were queued")
	}
}

// A child that floods its channel is read at most maxChannelMsgs messages a
// turn, so the master's loop gets on with the others; the rest waits.
func TestChannelReadBounded(t *testing.T) {
	m, kids := newTestMaster(t, 1, Config{})
	for range maxChannelMsgs + 10 {
		if err := kids[0].far.Send(ipc.Msg{Cmd: ipc.CmdPing}, nil); err != nil {
			t.Fatal(err)
		}
	}
	m.onChannel(kids[0].kid, &epoll.Event{Events: epoll.In})
	left := 0 // still in the master's end of the channel
	for {
		if _, _, err := kids[0].ch.Recv(m.fds); err != nil {
			break
		}
		left++
	}
	if left != 10 {
		t.Errorf("%d messages left after one turn, want 10 (read %d)", left, maxChannelMsgs)
	}
}

// A malformed message makes the master kill and retire the child (its slot
// is then respawned), not leave it half-heard.
func TestMalformedMessageKillsChild(t *testing.T) {
	m, f, kids := newFakeMaster(t, 1, Config{})
	garbage := make([]byte, 16) // command 0: never a message
	if err := unix.Sendmsg(kids[0].far.Fd, garbage, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	m.onChannel(kids[0].kid, &epoll.Event{Events: epoll.In})
	if got := f.killed(kids[0].pid); len(got) != 1 || got[0] != unix.SIGKILL || kids[0].state != draining {
		t.Fatalf("after a malformed message: signals %v, state %v; want SIGKILL, draining", got, kids[0].state)
	}
}
