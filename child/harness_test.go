package child

import (
	"bufio"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/procpool/procpool/child/internal/childtest"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Every test of this package checks the connections' state moves.
func init() { checkMoves = true }

// testChild is a child.Run on a goroutine with the test as its master: the
// test accepts loopback connections itself and passes them over the channel
// as the master does.
type testChild struct {
	master   *ipc.Channel
	childEnd int
	ln       *childtest.Listener
	done     chan error
	stopOnce sync.Once
	err      error
}

// startChild runs a child with cfg (its Channel is filled in; what is
// zero takes the defaults, long enough never to fire by accident in a test)
// and waits until it announces itself ready. Cleanup closes the channel and
// checks that Run returned ErrMasterGone, unless the test stopped it first.
func startChild(t *testing.T, cfg Config, h Handler) *testChild {
	t.Helper()
	m, c, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	tc := &testChild{master: ipc.NewChannel(m), childEnd: c, done: make(chan error, 1)}
	cfg.Channel = c // Listener stays 0: none, as the zero Config says
	go func() { tc.done <- Run(cfg, h) }()
	t.Cleanup(func() {
		if err := tc.stop(t); err != nil && err != ErrMasterGone {
			t.Errorf("Run returned %v, want ErrMasterGone", err)
		}
	})
	msg, ok := tc.recv(t, 5*time.Second)
	if !ok || msg.Cmd != ipc.CmdReady || msg.Pid != int32(os.Getpid()) {
		t.Fatalf("child announced %v (ok %v), want ready", msg, ok)
	}
	tc.ln = childtest.Listen(t)
	return tc
}

// recv waits for one message from the child.
func (tc *testChild) recv(t *testing.T, wait time.Duration) (ipc.Msg, bool) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(tc.master.Fd), Events: unix.POLLIN}}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		msg, _, err := tc.master.Recv(nil)
		if err == nil {
			return msg, true
		}
		if err != ipc.ErrAgain {
			t.Fatalf("channel: %v", err)
		}
		unix.Poll(pfd, 100)
	}
	return ipc.Msg{}, false
}

// send sends one command to the child.
func (tc *testChild) send(t *testing.T, cmd ipc.Cmd) {
	t.Helper()
	if err := tc.master.Send(ipc.Msg{Cmd: cmd}, nil); err != nil {
		t.Fatalf("send %v: %v", cmd, err)
	}
}

// dial opens a client connection and hands the server side to the child.
// The client side has a deadline so that a stuck child fails the test
// rather than hanging it.
func (tc *testChild) dial(t *testing.T) *client {
	t.Helper()
	return tc.dialWith(t, &net.Dialer{})
}

// dialWith is dial through d (from another local address, say).
func (tc *testChild) dialWith(t *testing.T, d *net.Dialer) *client {
	t.Helper()
	nc, fd := tc.ln.Dial(t, d)
	tc.pass(t, fd)
	return &client{Conn: nc, br: bufio.NewReaderSize(nc, 64<<10)}
}

// pass hands the server side of a connection to the child as the master
// does, and closes the test's copy.
func (tc *testChild) pass(t *testing.T, fd int) {
	t.Helper()
	childtest.Pass(t, tc.master, fd)
}

// stop closes the test's end of the channel (the master going away) and
// returns what Run returned; once Run has returned it only reports that.
func (tc *testChild) stop(t *testing.T) error {
	t.Helper()
	tc.stopOnce.Do(func() {
		tc.master.Close()
		tc.err = tc.wait(t)
		unix.Close(tc.childEnd)
		if tc.ln != nil {
			tc.ln.Close()
		}
	})
	return tc.err
}

// wait waits for Run to return.
func (tc *testChild) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-tc.done:
		tc.done <- err // for stop, which may wait again
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("child.Run did not return")
		return nil
	}
}

// client is a test's end of one connection.
type client struct {
	net.Conn
	br *bufio.Reader
}

func (c *client) send(t *testing.T, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func (c *client) read(t *testing.T) *response {
	t.Helper()
	r, err := readResponse(c.br, false)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return r
}

// roundTrip sends one GET and reads its answer.
func (c *client) roundTrip(t *testing.T, target string) *response {
	t.Helper()
	c.send(t, get(target))
	return c.read(t)
}
