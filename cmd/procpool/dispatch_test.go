package main

// Where connections go, seen from outside: which process holds each
// accepted socket and each listening socket, by inode, from /proc.

import (
	"fmt"
	"net"
	"testing"
)

// openConns makes n connections one after the other, each answering one
// request before the next is opened, and leaves them open.
func openConns(t *testing.T, s *server, n int) []*clientConn {
	t.Helper()
	conns := make([]*clientConn, n)
	for i := range conns {
		c := s.dial(t)
		body := fmt.Sprintf("connection %d", i)
		r, err := c.roundTrip(fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
		if err != nil || r.status != 200 || r.body != body {
			t.Fatalf("connection %d: %+v, %v", i, r, err)
		}
		conns[i] = c
	}
	return conns
}

// clientPorts are the local ports of conns, the peer ports of the server's
// sockets for them.
func clientPorts(conns []*clientConn) map[int]bool {
	ports := map[int]bool{}
	for _, c := range conns {
		ports[c.LocalAddr().(*net.TCPAddr).Port] = true
	}
	return ports
}

// TestRoundRobin opens 100 connections one by one against two children and
// finds exactly 50 accepted sockets in each. The stall rule is off: on a
// loaded machine it may rightly deal around a child that was not scheduled
// for 20 ms, and this test is about the order, not about stalls.
func TestRoundRobin(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2", "-stall=0")
	kids := s.waitReady(2)
	const n = 100
	conns := openConns(t, s, n)

	pids := append([]int{s.pid}, kidPids(kids)...)
	balanced := func(got sockets) bool {
		if got.total != n || got.unowned != 0 || got.byPid[s.pid] != 0 {
			return false
		}
		for _, k := range kids {
			if got.byPid[k.pid] != n/len(kids) {
				return false
			}
		}
		return true
	}
	got := pollOwners(t, balanced, s.port, tcpEstablished, clientPorts(conns), pids...)
	if got.total != n || got.unowned != 0 {
		t.Errorf("%d established sockets on port %d, %d held by no server process; want %d, all held",
			got.total, s.port, got.unowned, n)
	}
	if got.byPid[s.pid] != 0 {
		t.Errorf("master holds %d accepted sockets, want 0", got.byPid[s.pid])
	}
	for _, k := range kids {
		if c := got.byPid[k.pid]; c != n/len(kids) {
			t.Errorf("child slot %d (pid %d) holds %d connections, want %d", k.slot, k.pid, c, n/len(kids))
		}
	}
}

// TestSocketOwnership checks who listens and who holds accepted sockets in
// both modes.
func TestSocketOwnership(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"fdpass", "reuseport"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const workers, n = 3, 30
			s := startServer(t, "-mode="+mode, fmt.Sprintf("-workers=%d", workers))
			kids := s.waitReady(workers)
			conns := openConns(t, s, n)
			pids := append([]int{s.pid}, kidPids(kids)...)

			wantListen := func(l sockets) bool {
				if l.unowned != 0 {
					return false
				}
				if mode == "fdpass" {
					return l.total == 1 && l.byPid[s.pid] == 1
				}
				for _, k := range kids {
					if l.byPid[k.pid] != 1 {
						return false
					}
				}
				return l.total == workers && l.byPid[s.pid] == 0
			}
			listen := pollOwners(t, wantListen, s.port, tcpListen, nil, pids...)
			if listen.unowned != 0 {
				t.Errorf("%d LISTEN sockets on port %d held by no server process", listen.unowned, s.port)
			}
			switch mode {
			case "fdpass":
				if listen.total != 1 || listen.byPid[s.pid] != 1 {
					t.Errorf("LISTEN sockets: %d in all, %d in the master; want exactly one, the master's",
						listen.total, listen.byPid[s.pid])
				}
				for _, k := range kids {
					if c := listen.byPid[k.pid]; c != 0 {
						t.Errorf("child %d holds %d LISTEN sockets, want 0", k.pid, c)
					}
				}
			case "reuseport":
				if c := listen.byPid[s.pid]; c != 0 {
					t.Errorf("master holds %d LISTEN sockets, want 0", c)
				}
				for _, k := range kids {
					if c := listen.byPid[k.pid]; c != 1 {
						t.Errorf("child %d holds %d LISTEN sockets, want 1", k.pid, c)
					}
				}
				if listen.total != workers {
					t.Errorf("%d LISTEN sockets on port %d, want %d", listen.total, s.port, workers)
				}
			}

			wantEst := func(e sockets) bool { return e.total == n && e.unowned == 0 && e.byPid[s.pid] == 0 }
			est := pollOwners(t, wantEst, s.port, tcpEstablished, clientPorts(conns), pids...)
			if est.total != n || est.unowned != 0 {
				t.Errorf("%d established sockets on port %d, %d held by no server process; want %d, all held",
					est.total, s.port, est.unowned, n)
			}
			if c := est.byPid[s.pid]; c != 0 {
				t.Errorf("master holds %d accepted sockets, want 0", c)
			}
			inKids := 0
			for _, k := range kids {
				inKids += est.byPid[k.pid]
			}
			if inKids != n {
				t.Errorf("children hold %d accepted sockets, want %d", inKids, n)
			}
		})
	}
}
