package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifySocket stands in for systemd's notification socket: a unixgram socket
// with SO_PASSCRED, so that every message comes with its sender's pid.
type notifySocket struct {
	t    *testing.T
	path string
	conn *net.UnixConn
}

// notifyMsg is one notification and the pid that sent it.
type notifyMsg struct {
	pid  int
	text string
}

func (m notifyMsg) String() string { return fmt.Sprintf("%q from %d", m.text, m.pid) }

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	return &notifySocket{t: t, path: path, conn: conn}
}

// read returns the next message, or ok false if none came within timeout.
func (n *notifySocket) read(timeout time.Duration) (notifyMsg, bool) {
	n.t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	n.conn.SetReadDeadline(time.Now().Add(timeout))
	nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return notifyMsg{}, false
		}
		n.t.Fatalf("reading the notify socket: %v", err)
	}
	msg := notifyMsg{text: string(buf[:nb])}
	cmsgs, err := syscall.ParseSocketControlMessage(oob[:noob])
	if err == nil {
		for _, c := range cmsgs {
			if cred, err := syscall.ParseUnixCredentials(&c); err == nil {
				msg.pid = int(cred.Pid)
			}
		}
	}
	return msg, true
}

// expect reads the next message and fails unless it is want.
func (n *notifySocket) expect(step string, want notifyMsg) {
	n.t.Helper()
	got, ok := n.read(ioTimeout)
	if !ok {
		n.t.Fatalf("%s: no notification within %v, want %v", step, ioTimeout, want)
	}
	if got != want {
		n.t.Fatalf("%s: notification %v, want %v", step, got, want)
	}
}

// quiet fails if a message arrives within d.
func (n *notifySocket) quiet(step string, d time.Duration) {
	n.t.Helper()
	if got, ok := n.read(d); ok {
		n.t.Fatalf("%s: unexpected notification %v", step, got)
	}
}

// TestSystemdNotify stands in for systemd (Type=notify, NotifyAccess=all)
// and checks every message, and who sent it, through a master's life:
// start, reload, a failed upgrade, an upgrade, and the stop of the new
// master. The old master of an upgrade hands MAINPID over and then says
// nothing: a STOPPING=1 from it would stop the unit.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	bin, pidfile := installed(t)
	sd := newNotifySocket(t)
	s := startServerWith(t, useBin(bin, "NOTIFY_SOCKET="+sd.path), "-workers=1", "-pidfile="+pidfile)
	// The new master of the upgrade is not the test's child: stop it, should
	// the test fail, before the server's cleanup looks for leftovers.
	adopted := adoptedCleanup(t, s, pidfile)
	s.waitReady(1)
	old := s.pid
	sd.expect("start", notifyMsg{old, "READY=1\nMAINPID=" + strconv.Itoa(old)})

	s.signal(syscall.SIGHUP)
	sd.expect("reload", notifyMsg{old, "RELOADING=1"})
	sd.expect("reload", notifyMsg{old, "READY=1"})

	// A failed upgrade: the binary on disk exits 1. Nothing is said.
	failUpgrade(t, s, bin, pidfile)
	sd.quiet("failed upgrade", 200*time.Millisecond)

	// The upgrade: the new master says READY=1 with its pid, the old one
	// MAINPID, and then the old one drains and exits in silence.
	installBin(t, bin)
	if code, stderr := runToExit(t, "-s", "upgrade", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s upgrade exited %d: %s", code, stderr)
	}
	first, ok := sd.read(ioTimeout)
	if !ok {
		t.Fatal("upgrade: no notification from the new master")
	}
	newPid := first.pid
	if id, err := identify(newPid); err == nil {
		*adopted = id
	}
	if newPid == old || first.text != "READY=1\nMAINPID="+strconv.Itoa(newPid) {
		t.Fatalf("upgrade: first notification %v, want READY=1 and MAINPID from a new master", first)
	}
	sd.expect("upgrade", notifyMsg{old, "MAINPID=" + strconv.Itoa(newPid)})
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("old master %d still running %v after the upgrade", old, stopTimeout)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("old master exited with %v, want status 0", s.cmd.ProcessState)
	}
	sd.quiet("old master's exit", 200*time.Millisecond)
	for _, pid := range childrenOf(t, newPid) {
		s.track(pid) // the server's cleanup checks they are gone
	}

	// The stop of the unit, by the new master.
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s stop exited %d: %s", code, stderr)
	}
	sd.expect("stop", notifyMsg{newPid, "STOPPING=1"})
	if adopted.alive() {
		t.Errorf("new master %d still alive after -s stop returned", newPid)
	}
	sd.quiet("after the stop", 200*time.Millisecond)
}

// listenerFile is a listening socket on 127.0.0.1, as systemd would pass
// it, and its address; it is closed at the test's end.
func listenerFile(t *testing.T) (*os.File, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close() // the dup in f keeps the socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, ln.Addr().String()
}

// activated is a hook that starts the command with f as fd 3 and LISTEN_FDS
// and LISTEN_PID set, as systemd's socket activation does. LISTEN_PID must be
// the master's pid, known only after the fork: a shell that execs the binary
// keeps its own pid, as systemd's child does.
func activated(f *os.File) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		cmd.Args = append([]string{"/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, cmd.Path}, cmd.Args[1:]...)
		cmd.Path = "/bin/sh"
		cmd.ExtraFiles = []*os.File{f}
	}
}

// TestSocketActivationReuseport: socket activation hands over a listening
// socket, which reuseport mode cannot serve; the master says so and exits 2.
func TestSocketActivationReuseport(t *testing.T) {
	t.Parallel()
	f, _ := listenerFile(t)
	cmd := exec.Command(binPath, "-workers=1", "-mode=reuseport", "-listen=127.0.0.1:1")
	cmd.Env = serverEnv()
	activated(f)(cmd)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	const want = "procpool: socket activation works in fdpass mode only: in reuseport mode every child binds its own " +
		"SO_REUSEPORT socket, and the listening socket systemd passes cannot be shared with them\n"
	if code := cmd.ProcessState.ExitCode(); code != 2 || stderr.String() != want {
		t.Errorf("socket activation in reuseport mode: status %d (%v), stderr %q; want 2 and %q", code, err, stderr.String(), want)
	}
}

// TestSocketActivation hands the master a listening socket as fd 3 with
// LISTEN_FDS=1 and LISTEN_PID set to the master's own pid, as systemd does:
// the master must serve that socket instead of binding -listen.
func TestSocketActivation(t *testing.T) {
	t.Parallel()
	f, addr := listenerFile(t)
	s := startServerWith(t, activated(f), "-workers=1", "-listen=127.0.0.1:1") // port 1 would fail: the inherited socket must win
	s.waitReady(1)
	if s.addr != addr {
		t.Fatalf("master serves %s, want the activated socket %s", s.addr, addr)
	}
	if r, err := fetch(addr, "/"); err != nil || r.body != helloBody {
		t.Fatalf("GET / on the activated socket: %+v, %v", r, err)
	}
}

// TestUserSwitch: started as root with -user nobody, the master stays root and
// every child runs as nobody.
func TestUserSwitch(t *testing.T) {
	t.Parallel()
	u, err := nobody()
	if err != nil {
		t.Skip(err)
	}
	s := startServer(t, "-workers=2", "-user=nobody")
	s.waitReady(2)
	for _, pid := range s.children() {
		uid := statusField(t, pid, "Uid")
		if uid[0] != u.Uid || uid[1] != u.Uid {
			t.Errorf("child %d runs as uid %v, want %s", pid, uid, u.Uid)
		}
	}
	if uid := statusField(t, s.pid, "Uid"); uid[0] != "0" {
		t.Errorf("master runs as uid %s, want 0", uid[0])
	}
	if r := s.get(t, "/"); r.body != helloBody {
		t.Fatalf("GET / through a child running as nobody: %+v", r)
	}
}
