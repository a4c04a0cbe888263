package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sdNotify stands in for systemd's notification socket: a unixgram socket
// with SO_PASSCRED, so that every message comes with its sender's pid.
type sdNotify struct {
	t    *testing.T
	path string
	conn *net.UnixConn
}

// sdMsg is one notification and the pid that sent it.
type sdMsg struct {
	pid  int
	text string
}

func (m sdMsg) String() string { return fmt.Sprintf("%q from %d", m.text, m.pid) }

func newSdNotify(t *testing.T) *sdNotify {
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
	return &sdNotify{t: t, path: path, conn: conn}
}

// read returns the next message, or ok false if none came within timeout.
func (n *sdNotify) read(timeout time.Duration) (sdMsg, bool) {
	n.t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	n.conn.SetReadDeadline(time.Now().Add(timeout))
	nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return sdMsg{}, false
		}
		n.t.Fatalf("reading the notify socket: %v", err)
	}
	msg := sdMsg{text: string(buf[:nb])}
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
func (n *sdNotify) expect(step string, want sdMsg) {
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
func (n *sdNotify) quiet(step string, d time.Duration) {
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
	dir := t.TempDir()
	bin := filepath.Join(dir, "procpool")
	// The binary, linked rather than copied: a copy's write fd, inherited
	// for a moment by a process another test forks, makes exec fail with
	// ETXTBSY. A new name is renamed over the old, as an install does.
	copyBin := func() {
		t.Helper()
		os.Remove(bin + ".new")
		if err := os.Link(binPath, bin+".new"); err != nil {
			t.Skipf("cannot link the binary into the test's directory: %v", err)
		}
		if err := os.Rename(bin+".new", bin); err != nil {
			t.Fatal(err)
		}
	}
	copyBin()
	pidfile := filepath.Join(dir, "procpool.pid")
	sd := newSdNotify(t)
	s := startServerWith(t, func(cmd *exec.Cmd) {
		cmd.Path, cmd.Args[0] = bin, bin
		cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sd.path)
	}, "-workers=1", "-pidfile="+pidfile)
	// The new master of the upgrade is not the test's child: stop it, should
	// the test fail, before the server's cleanup looks for leftovers.
	var adopted procID
	t.Cleanup(func() {
		sigStopAdopted(t, adopted)
		for _, id := range sigProcsWith(pidfile) {
			if id.pid != s.pid {
				t.Errorf("process %d with pidfile %s still running at the end of the test; stopping it", id.pid, pidfile)
				sigStopAdopted(t, id)
			}
		}
	})
	s.waitReady(1)
	old := s.pid
	sd.expect("start", sdMsg{old, "READY=1\nMAINPID=" + strconv.Itoa(old)})

	s.sigSignal(syscall.SIGHUP)
	sd.expect("reload", sdMsg{old, "RELOADING=1"})
	sd.expect("reload", sdMsg{old, "READY=1"})

	// A failed upgrade: the binary on disk exits 1. Nothing is said.
	script := filepath.Join(dir, "broken")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(script, bin); err != nil {
		t.Fatal(err)
	}
	if code, stderr := runToExit(t, "-s", "upgrade", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s upgrade exited %d: %s", code, stderr)
	}
	if !s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, `msg="upgrade failed`) })
	}) {
		t.Fatalf("no failed upgrade logged; log:\n%s", s.log)
	}
	sd.quiet("failed upgrade", 200*time.Millisecond)

	// The upgrade: the new master says READY=1 with its pid, the old one
	// MAINPID, and then the old one drains and exits in silence.
	copyBin()
	if code, stderr := runToExit(t, "-s", "upgrade", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s upgrade exited %d: %s", code, stderr)
	}
	first, ok := sd.read(ioTimeout)
	if !ok {
		t.Fatal("upgrade: no notification from the new master")
	}
	newPid := first.pid
	if id, err := identify(newPid); err == nil {
		adopted = id
	}
	if newPid == old || first.text != "READY=1\nMAINPID="+strconv.Itoa(newPid) {
		t.Fatalf("upgrade: first notification %v, want READY=1 and MAINPID from a new master", first)
	}
	sd.expect("upgrade", sdMsg{old, "MAINPID=" + strconv.Itoa(newPid)})
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("old master %d still running %v after the upgrade", old, stopTimeout)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("old master exited with %v, want status 0", s.cmd.ProcessState)
	}
	sd.quiet("old master's exit", 200*time.Millisecond)
	for _, pid := range mustChildren(t, newPid) {
		s.track(pid) // the server's cleanup checks they are gone
	}

	// The stop of the unit, by the new master.
	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s stop exited %d: %s", code, stderr)
	}
	sd.expect("stop", sdMsg{newPid, "STOPPING=1"})
	if adopted.alive() {
		t.Errorf("new master %d still alive after -s stop returned", newPid)
	}
	sd.quiet("after the stop", 200*time.Millisecond)
}

func mustChildren(t *testing.T, pid int) []int {
	t.Helper()
	pids, err := childPids(pid)
	if err != nil {
		t.Fatalf("children of %d: %v", pid, err)
	}
	return pids
}

// TestSocketActivationReuseport: socket activation hands over a listening
// socket, which reuseport mode cannot serve; the master says so and exits 2.
func TestSocketActivationReuseport(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, binPath,
		"-workers=1", "-mode=reuseport", "-listen=127.0.0.1:1")
	cmd.Env = serverEnv()
	cmd.ExtraFiles = []*os.File{f}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close() // the dup in f keeps the socket
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr := ln.Addr().String()
	// LISTEN_PID must be the master's pid, known only after the fork: a
	// shell that execs the binary keeps its own pid, as systemd's child does.
	s := startServerWith(t, func(cmd *exec.Cmd) {
		cmd.Args = append([]string{"/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, binPath}, cmd.Args[1:]...)
		cmd.Path = "/bin/sh"
		cmd.ExtraFiles = []*os.File{f}
	}, "-workers=1", "-listen=127.0.0.1:1") // port 1 would fail: the inherited socket must win
	s.waitReady(1)
	if s.addr != addr {
		t.Fatalf("master serves %s, want the activated socket %s", s.addr, addr)
	}
	if body := sdGet(t, addr); body != "Hello World" {
		t.Fatalf("GET / on the activated socket: %q", body)
	}
}

// TestUserSwitch: started as root with -user nobody, the master stays root and
// every child runs as nobody.
func TestUserSwitch(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody on this machine")
	}
	s := startServer(t, "-workers=2", "-user=nobody")
	s.waitReady(2)
	for _, pid := range s.children() {
		uid := sdStatusField(t, pid, "Uid:")
		if uid[0] != u.Uid || uid[1] != u.Uid {
			t.Errorf("child %d runs as uid %v, want %s", pid, uid, u.Uid)
		}
	}
	if uid := sdStatusField(t, s.pid, "Uid:"); uid[0] != "0" {
		t.Errorf("master runs as uid %s, want 0", uid[0])
	}
	if body := sdGet(t, s.addr); body != "Hello World" {
		t.Fatalf("GET / through a child running as nobody: %q", body)
	}
}

func sdStatusField(t *testing.T, pid int, field string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return nil
}

func sdGet(t *testing.T, addr string) string {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	var all []byte
	buf := make([]byte, 4096)
	for {
		n, err := nc.Read(buf)
		all = append(all, buf[:n]...)
		if err != nil {
			break
		}
	}
	_, body, _ := strings.Cut(string(all), "\r\n\r\n")
	return body
}
