package main

import (
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdNotify stands in for systemd: a unixgram socket as NOTIFY_SOCKET
// must receive READY=1 with MAINPID once the children serve, RELOADING=1 then
// READY=1 around a reload, and STOPPING=1 at a stop.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := startServerWith(t, func(cmd *exec.Cmd) {
		cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+path)
	}, "-workers=1")
	s.waitReady(1)

	next := func(want string) string {
		t.Helper()
		buf := make([]byte, 512)
		conn.SetReadDeadline(time.Now().Add(ioTimeout))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %q from the master: %v", want, err)
		}
		msg := string(buf[:n])
		if !strings.Contains(msg, want) {
			t.Fatalf("notify message %q, want one containing %q", msg, want)
		}
		return msg
	}
	if msg := next("READY=1"); !strings.Contains(msg, "MAINPID="+strconv.Itoa(s.pid)) {
		t.Errorf("first message %q does not name MAINPID=%d", msg, s.pid)
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next("RELOADING=1")
	next("READY=1")
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING=1")
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
