package master

// Unit tests of readiness behind a load balancer and of the shutdown delay.
// The processes are fakes (fakeSys); the probes are called as the admin
// listener calls them.

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// readyz is the status /readyz answers.
func readyz(m *Master) int {
	rec := httptest.NewRecorder()
	m.lb.serveReady(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code
}

// systemd listens on a NOTIFY_SOCKET of the test's; heard returns what it
// was told since the last call.
func systemd(t *testing.T) (heard func() []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeLater(t, fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	return func() []string {
		var l []string
		buf := make([]byte, 256)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return l
			}
			l = append(l, string(buf[:n]))
		}
	}
}

// /readyz says 200 once the first generation serves, and 503 before.
func TestReadyOnceServing(t *testing.T) {
	m, _, _ := newFakeMaster(t, 1, Config{})
	m.announce = true // Ready not yet called
	m.lbTurn(m.now())
	if readyz(m) != http.StatusServiceUnavailable {
		t.Fatal("ready before the first generation serves")
	}
	m.announce = false
	m.lbTurn(m.now())
	if readyz(m) != http.StatusOK || !m.lbDue().IsZero() {
		t.Fatalf("serving: /readyz %d, wake-up %v", readyz(m), m.lbDue())
	}
	m.stop(graceful)
	m.lbTurn(m.now())
	if readyz(m) != http.StatusServiceUnavailable {
		t.Fatal("ready while stopping")
	}
}

// SIGTERM with a shutdown delay: /readyz says 503 at once and systemd hears
// STOPPING, but nothing stops yet: the children keep serving, told once to
// close connections after their next answer, and a child that gets ready
// meanwhile is told too. A second SIGTERM changes nothing. When the delay is
// over the graceful stop begins, without a second STOPPING.
func TestShutdownDelay(t *testing.T) {
	heard := systemd(t)
	m, f, kids := newFakeMaster(t, 2, Config{ShutdownDelay: time.Minute})
	m.lbTurn(m.now())
	m.pending = pending(unix.SIGTERM)
	m.handleSignals()
	until := m.lb.until
	if readyz(m) != http.StatusServiceUnavailable || m.stopBegun() || !m.lbDue().Equal(until) || until.IsZero() {
		t.Fatalf("in the delay: /readyz %d, stopping %v, wake-up %v", readyz(m), m.stopping, m.lbDue())
	}
	if got := heard(); !slices.Equal(got, []string{"STOPPING=1"}) {
		t.Fatalf("systemd heard %q, want STOPPING=1", got)
	}
	for _, k := range kids {
		if _, cmds := k.take(t); !slices.Equal(cmds, []ipc.Cmd{ipc.CmdGoAway}) {
			t.Fatalf("child %d told %v, want go-away", k.slot, cmds)
		}
	}

	m.pending = pending(unix.SIGTERM)
	m.handleSignals()
	m.setWorkers(3) // a child that gets ready during the delay
	m.maintain(m.now())
	third := kidOf(m, 2)
	f.ready(third)
	m.lbTurn(until.Add(-time.Millisecond))
	if !m.lb.until.Equal(until) || m.stopBegun() || readyz(m) != http.StatusServiceUnavailable {
		t.Fatalf("a second SIGTERM moved the delay to %v, or stopped (%v)", m.lb.until, m.stopping)
	}
	if _, cmds := f.child(third).take(t); !slices.Equal(cmds, []ipc.Cmd{ipc.CmdGoAway}) {
		t.Fatalf("the child ready during the delay was told %v, want go-away", cmds)
	}
	for _, k := range kids {
		if _, cmds := k.take(t); len(cmds) != 0 {
			t.Fatalf("child %d told %v again", k.slot, cmds)
		}
	}

	m.lbTurn(until)
	if m.stopping != graceful || !m.lbDue().IsZero() || readyz(m) != http.StatusServiceUnavailable {
		t.Fatalf("after the delay: stopping %v, wake-up %v, /readyz %d", m.stopping, m.lbDue(), readyz(m))
	}
	if got := heard(); len(got) != 0 {
		t.Fatalf("systemd heard %q again at the stop", got)
	}
	for _, k := range kids {
		if _, cmds := k.take(t); !slices.Equal(cmds, []ipc.Cmd{ipc.CmdDrain}) {
			t.Fatalf("child %d told %v at the stop, want drain", k.slot, cmds)
		}
	}
}

// Without a delay SIGTERM stops at once.
func TestShutdownWithoutDelay(t *testing.T) {
	m, _, _ := newFakeMaster(t, 1, Config{})
	m.pending = pending(unix.SIGTERM)
	m.handleSignals()
	if m.stopping != graceful || !m.lb.until.IsZero() {
		t.Fatalf("stopping %v, delay until %v", m.stopping, m.lb.until)
	}
}

// /status and the stall warning name the client of a running request when
// the child published it, and say nothing of it otherwise.
func TestRunningRequestClient(t *testing.T) {
	m, _, kids := newFakeMaster(t, 2, Config{})
	if err := m.startAdmin("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.admin.stop)
	client := netip.MustParseAddrPort("192.0.2.7:41000")
	now := time.Now().UnixNano()
	m.stats.Cell(kids[0].cell).BeginFrom(now, []byte("GET"), []byte("/slow"), client, false)
	m.stats.Cell(kids[1].cell).Begin(now, []byte("POST"), []byte("/up"), false)
	st := m.admin.status()
	for _, c := range st.Children {
		want := map[int]string{kids[0].pid: client.String(), kids[1].pid: ""}[c.Pid]
		if c.Request == nil || c.Request.Client != want {
			t.Errorf("child %d: request %+v, want client %q", c.Pid, c.Request, want)
		}
	}
	if d := clientDesc(m.stats.Cell(kids[0].cell)); len(d) != 2 || d[1] != client.String() {
		t.Errorf("log attributes %v, want the client", d)
	}
	if d := clientDesc(m.stats.Cell(kids[1].cell)); d != nil {
		t.Errorf("log attributes %v for an unknown client, want none", d)
	}
}
