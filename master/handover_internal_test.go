package master

// Unit tests of the hand-over at an upgrade: the old master forwards the
// connections its retired children give back to the new master, over the
// channel the upgrade's handshake ran on. Both masters are in this process;
// the new one is only its end of the channel, its queue and its carried
// bytes. No process is forked.

import (
	"slices"
	"strconv"
	"testing"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// upgraded is an old master past its upgrade's handshake, its child told to
// retire with hand-back, and the new master at the far end of the hand-over
// channel.
func upgraded(t *testing.T) (old *Master, kids []testKid, newer *Master) {
	t.Helper()
	m, f, kids := upgradeMaster(t)
	m.upgrade()
	p := f.procs[m.upgradePid]
	newer = &Master{upgradeIn: ipc.NewChannel(p.fd(t, upgradeReadyFd)), log: m.log,
		fds: make([]int, 0, ipc.MaxFds), carried: map[int][]byte{}}
	var err error
	if newer.poller, err = epoll.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, fd := range newer.queue {
			unix.Close(fd)
		}
		if newer.upgradeIn != nil {
			newer.upgradeIn.Close()
		}
		newer.poller.Close()
	})
	newer.reportUpgraded()
	m.onUpgradeReady()
	if m.handover == nil || m.stopping != graceful {
		t.Fatalf("after the new master's ready: hand-over %v, stopping %v", m.handover, m.stopping)
	}
	t.Cleanup(func() {
		if m.handover != nil {
			m.handover.Close()
		}
	})
	if _, cmds := kids[0].take(t); len(cmds) != 1 || cmds[0] != ipc.CmdRetire {
		t.Fatalf("the old child was told %v, want retire (hand-back)", cmds)
	}
	return m, kids, newer
}

// fillHandover fills the hand-over channel with pings, which the new master
// ignores, until it takes no more; it returns how many it took.
func fillHandover(t *testing.T, m *Master) int {
	t.Helper()
	for n := 0; n < 1<<20; n++ {
		switch err := m.handover.Send(ipc.Msg{Cmd: ipc.CmdPing}, nil); err {
		case nil:
		case ipc.ErrAgain:
			return n
		default:
			t.Fatal(err)
		}
	}
	t.Fatal("the hand-over channel never filled")
	return 0
}

// drainPings takes n pings out of the new master's end.
func drainPings(t *testing.T, newer *Master, n int) {
	t.Helper()
	for i := range n {
		msg, fds, err := newer.upgradeIn.Recv(newer.fds)
		if err != nil || msg.Cmd != ipc.CmdPing || len(fds) != 0 {
			t.Fatalf("ping %d of %d: %v with %d fds, %v", i, n, msg.Cmd, len(fds), err)
		}
	}
}

// received has the new master take all that was forwarded so far.
func received(newer *Master) {
	for {
		n := len(newer.queue)
		newer.onHandover()
		if len(newer.queue) == n {
			return
		}
	}
}

// awaitRoom waits, as the loop does, for the hand-over channel's wake-up and
// hands it to onHandoverRoom. It comes at once: the test made the room (a
// Unix socket polls writable once its peer left no more than a quarter of
// its send buffer queued).
func awaitRoom(t *testing.T, m *Master) {
	t.Helper()
	events := make([]epoll.Event, 16)
	for range 5 {
		n, err := m.poller.Wait(events, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == m.handover.Fd {
				m.onHandoverRoom()
				if m.handoverWait {
					t.Fatal("still waiting for room after the wake-up")
				}
				return
			}
		}
	}
	t.Fatal("no wake-up for the hand-over channel")
}

// carriedConns is n connections as the old master queues them when its
// children give them back: every third with no bytes read yet, the others
// with their own request bytes; so each goes in a message of its own.
func carriedConns(t *testing.T, m *Master, n int) (fds []int, bytes map[uint64]string) {
	t.Helper()
	fds = conns(t, n)
	bytes = map[uint64]string{}
	for i, ino := range inodes(t, fds) {
		if i%3 != 1 {
			bytes[ino] = "GET /" + strconv.Itoa(i) + " HT"
		}
		m.carried[fds[i]] = keep([]byte(bytes[ino]))
	}
	return fds, bytes
}

// When the hand-over channel is full the connections stay queued, open,
// with their bytes, and the master waits for room; given some, it sends what
// fits and waits again. In the end the new master has every connection
// exactly once, in the order the old one queued them, each with its bytes.
func TestForwardWaitsForRoom(t *testing.T) {
	m, _, newer := upgraded(t)
	pings := fillHandover(t, m)
	if pings < 4 {
		t.Fatalf("the channel took %d pings; the test needs a few", pings)
	}
	// As many connections as pings, each in a message of its own: the room
	// of four fifths of the pings cannot take them all.
	queued, bytes := carriedConns(t, m, pings)
	m.queue = append(m.queue, queued...)
	want := inodes(t, m.queue)

	for range 2 { // a second turn changes nothing while the channel is full
		m.dispatch()
		if m.forwarded != 0 || !m.handoverWait {
			t.Fatalf("full channel: forwarded %d, waiting for room %v", m.forwarded, m.handoverWait)
		}
		if got := inodes(t, m.queue); !slices.Equal(got, want) || len(m.carried) != len(want) {
			t.Fatalf("full channel: %d of %d queued (carried %d); want all kept, open, in order",
				len(got), len(want), len(m.carried))
		}
	}

	room := pings - pings/5
	drainPings(t, newer, room)
	awaitRoom(t, m)
	m.dispatch()
	sent := m.forwarded
	if sent == 0 || len(m.queue) == 0 || sent+len(m.queue) != len(want) || !m.handoverWait {
		t.Fatalf("with room for some: forwarded %d, %d left, waiting %v", sent, len(m.queue), m.handoverWait)
	}
	if got := inodes(t, m.queue); !slices.Equal(got, want[sent:]) {
		t.Fatal("what did not fit is not the rest of the queue, in order")
	}
	drainPings(t, newer, pings-room)
	received(newer)
	if got := inodes(t, newer.queue); !slices.Equal(got, want[:sent]) {
		t.Fatalf("new master got %d connections, want the first %d in order", len(got), sent)
	}

	awaitRoom(t, m)
	m.dispatch()
	if len(m.queue) != 0 || m.forwarded != len(want) || len(m.carried) != 0 || m.handoverWait {
		t.Fatalf("with room: %d left, forwarded %d of %d, carried %d, waiting %v",
			len(m.queue), m.forwarded, len(want), len(m.carried), m.handoverWait)
	}
	received(newer)
	if got := inodes(t, newer.queue); !slices.Equal(got, want) {
		t.Fatalf("new master got %d connections, want the %d queued, once each, in order", len(got), len(want))
	}
	if newer.adopted != len(want) || len(newer.carried) != len(want) {
		t.Fatalf("new master adopted %d, marked %d handed on; want %d", newer.adopted, len(newer.carried), len(want))
	}
	for i, fd := range newer.queue {
		if got := string(newer.carried[fd]); got != bytes[want[i]] {
			t.Fatalf("connection %d arrived with %q, want %q", i, got, bytes[want[i]])
		}
	}
}

// Connections without bytes go in batches of up to ipc.MaxFds, one with
// bytes in a message of its own, so a batch never jumps one with bytes.
func TestForwardBatches(t *testing.T) {
	m, _, newer := upgraded(t)
	plain := conns(t, ipc.MaxFds+2)
	withBytes := conns(t, 2)
	m.carried[withBytes[0]] = keep([]byte("GET /a HT"))
	m.carried[withBytes[1]] = keep([]byte("GET /b HT"))
	// plain, with bytes, MaxFds+1 plain, with bytes.
	m.queue = append(append(append(append(m.queue, plain[0]), withBytes[0]), plain[1:]...), withBytes[1])
	want := inodes(t, m.queue)
	m.dispatch()
	if len(m.queue) != 0 || m.forwarded != len(want) {
		t.Fatalf("%d left, forwarded %d of %d", len(m.queue), m.forwarded, len(want))
	}
	type message struct {
		cmd  ipc.Cmd
		fds  int
		data string
	}
	var got []message
	var order []int
	for {
		msg, fds, err := newer.upgradeIn.Recv(newer.fds)
		if err == ipc.ErrAgain {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, message{msg.Cmd, len(fds), string(newer.upgradeIn.Data())})
		order = append(order, fds...)
	}
	t.Cleanup(func() {
		for _, fd := range order {
			unix.Close(fd)
		}
	})
	wantMsgs := []message{{ipc.CmdFds, 1, ""}, {ipc.CmdConn, 1, "GET /a HT"},
		{ipc.CmdFds, ipc.MaxFds, ""}, {ipc.CmdFds, 1, ""}, {ipc.CmdConn, 1, "GET /b HT"}}
	if len(got) != len(wantMsgs) {
		t.Fatalf("messages %v, want %v", got, wantMsgs)
	}
	for i := range got {
		if got[i] != wantMsgs[i] {
			t.Fatalf("message %d: %v, want %v", i, got[i], wantMsgs[i])
		}
	}
	if !slices.Equal(inodes(t, order), want) {
		t.Fatal("the connections arrived out of order")
	}
}

// A new master that dies while the old one waits for room leaves no one to
// serve what is queued: the old master closes it, so the clients see the
// connection end instead of hanging, and drops the channel.
func TestForwardToDeadMaster(t *testing.T) {
	m, _, newer := upgraded(t)
	fillHandover(t, m)
	var clients []int
	for range 3 {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeLater(t, p[1])
		m.queue = append(m.queue, p[0])
		clients = append(clients, p[1])
	}
	m.carried[m.queue[1]] = keep([]byte("GET / HT"))
	m.dispatch()
	if len(m.queue) != 3 || !m.handoverWait {
		t.Fatalf("full channel: %d queued, waiting %v", len(m.queue), m.handoverWait)
	}
	var b [1]byte
	if _, err := unix.Read(clients[0], b[:]); err != unix.EAGAIN {
		t.Fatalf("a client's connection ended while the old master waited for room: %v", err)
	}
	newer.upgradeIn.Close()
	newer.upgradeIn = nil
	awaitRoom(t, m) // the hang-up wakes it
	m.dispatch()
	if m.handover != nil || len(m.queue) != 0 || len(m.carried) != 0 || m.forwarded != 0 {
		t.Fatalf("after the new master died: hand-over %v, %d queued, %d carried, %d forwarded",
			m.handover, len(m.queue), len(m.carried), m.forwarded)
	}
	for i, c := range clients {
		if n, err := unix.Read(c, b[:]); n != 0 || err != nil {
			t.Errorf("client %d: read %d, %v; want the end of the connection", i, n, err)
		}
	}
}

// The new master skips a malformed message and takes what follows; the old
// master's exit (EOF) ends the hand-over.
func TestHandoverReceive(t *testing.T) {
	m, _, newer := upgraded(t)
	if err := unix.Sendmsg(m.handover.Fd, make([]byte, 16), nil, nil, 0); err != nil { // command 0: no message
		t.Fatal(err)
	}
	m.queue = append(m.queue, conns(t, 2)...)
	want := inodes(t, m.queue)
	m.dispatch()
	newer.onHandover()
	if got := inodes(t, newer.queue); !slices.Equal(got, want) || newer.upgradeIn == nil {
		t.Fatalf("after a malformed message: took %d of %d, channel %v", len(got), len(want), newer.upgradeIn)
	}
	m.handover.Close()
	m.handover = nil
	newer.onHandover()
	if newer.upgradeIn != nil || newer.adopted != 2 {
		t.Fatalf("after the old master's exit: channel %v, adopted %d", newer.upgradeIn, newer.adopted)
	}
	newer.reportUpgraded() // no old master left to tell: nothing to do
}
