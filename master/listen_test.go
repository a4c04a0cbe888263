package master_test

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

// listen is Listen and LocalAddr, ending the test on an error; the caller
// closes fd.
func listen(t *testing.T, addr string, backlog int, reuseport bool) (int, string) {
	t.Helper()
	fd, err := master.Listen(addr, backlog, reuseport)
	if err != nil {
		t.Fatalf("Listen(%q, %d, %v): %v", addr, backlog, reuseport, err)
	}
	local, err := master.LocalAddr(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("LocalAddr: %v", err)
	}
	return fd, local
}

// mustListen is listen with fd closed when the test ends.
func mustListen(t *testing.T, addr string, backlog int, reuseport bool) (int, string) {
	t.Helper()
	fd, local := listen(t, addr, backlog, reuseport)
	closeFd(t, fd)
	return fd, local
}

func mustReserve(t *testing.T, addr string) (int, string) {
	t.Helper()
	fd, err := master.Reserve(addr)
	if err != nil {
		t.Fatalf("Reserve(%q): %v", addr, err)
	}
	closeFd(t, fd)
	local, err := master.LocalAddr(fd)
	if err != nil {
		t.Fatalf("LocalAddr: %v", err)
	}
	return fd, local
}

// checkSocket asserts the flags every socket from Listen and Reserve has.
func checkSocket(t *testing.T, fd, family int, listening, reuseport bool) {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		t.Error("socket is blocking")
	}
	fdfl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fdfl&unix.FD_CLOEXEC == 0 {
		t.Error("socket is not close-on-exec")
	}
	if v := sockopt(t, fd, unix.SOL_SOCKET, unix.SO_TYPE); v != unix.SOCK_STREAM {
		t.Errorf("SO_TYPE = %d, want SOCK_STREAM", v)
	}
	if v := sockopt(t, fd, unix.SOL_SOCKET, unix.SO_DOMAIN); v != family {
		t.Errorf("SO_DOMAIN = %d, want %d", v, family)
	}
	// Listeners bind beside TIME_WAIT leftovers; a reservation must not
	// (see Reserve), so only listeners carry SO_REUSEADDR.
	if v := sockopt(t, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); (v != 0) != listening {
		t.Errorf("SO_REUSEADDR = %d, want %v", v, listening)
	}
	if v := sockopt(t, fd, unix.SOL_SOCKET, unix.SO_REUSEPORT); (v != 0) != reuseport {
		t.Errorf("SO_REUSEPORT = %d, want %v", v, reuseport)
	}
	if v := sockopt(t, fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); (v != 0) != listening {
		t.Errorf("SO_ACCEPTCONN = %d, want listening=%v", v, listening)
	}
}

func portOf(t *testing.T, addr string) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("LocalAddr gave %q: %v", addr, err)
	}
	return ap.Port()
}

// dialAccept connects to addr and accepts the connection on one of fds,
// returning its index.
func dialAccept(t *testing.T, addr string, fds ...int) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	pfds := make([]unix.PollFd, len(fds))
	for i, fd := range fds {
		pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		n, err := unix.Poll(pfds, 100)
		if err == unix.EINTR || n == 0 {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		for i, p := range pfds {
			if p.Revents&unix.POLLIN == 0 {
				continue
			}
			nfd, _, err := unix.Accept4(fds[i], unix.SOCK_CLOEXEC)
			if err != nil {
				t.Fatalf("accept on a readable listener: %v", err)
			}
			unix.Close(nfd)
			return i
		}
	}
	t.Fatalf("no listener got the connection to %s", addr)
	return -1
}

func inUse(addr string) string { return "listen " + addr + ": address already in use" }

func TestListenLoopback(t *testing.T) {
	t.Parallel()
	fd, local := mustListen(t, "127.0.0.1:0", 0, false)
	checkSocket(t, fd, unix.AF_INET, true, false)
	ap := netip.MustParseAddrPort(local)
	if ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() == 0 {
		t.Errorf("LocalAddr = %s, want 127.0.0.1 with a port chosen", local)
	}
	dialAccept(t, local, fd)
}

func TestListenReuseportFlag(t *testing.T) {
	t.Parallel()
	fd, local := mustListen(t, "127.0.0.1:0", 0, true)
	checkSocket(t, fd, unix.AF_INET, true, true)
	// A second member of the group on the same port: what children do.
	fd2, local2 := mustListen(t, local, 0, true)
	checkSocket(t, fd2, unix.AF_INET, true, true)
	if local2 != local {
		t.Errorf("second reuseport listener on %s, want %s", local2, local)
	}
}

// queueLimit is the accept queue's limit of a listening socket, what `ss
// -ltn` shows as Send-Q: for a listener TCP_INFO's tcpi_sacked carries it.
func queueLimit(t *testing.T, fd int) int {
	t.Helper()
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatalf("TCP_INFO: %v", err)
	}
	return int(ti.Sacked)
}

// kernelBacklogCap is the largest accept queue the kernel gives a listener,
// as a user sees it: the Send-Q of a socket that asked listen(2) for more
// than any kernel allows (the kernel caps the request at
// net.core.somaxconn).
func kernelBacklogCap(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, math.MaxInt32); err != nil {
		t.Fatal(err)
	}
	return queueLimit(t, fd)
}

func TestListenBacklog(t *testing.T) {
	t.Parallel()
	most := kernelBacklogCap(t)
	for _, tc := range []struct{ ask, want int }{
		{7, 7},
		{1, 1},
		{0, most},  // "the kernel's maximum"
		{-1, most}, // likewise
	} {
		fd, _ := mustListen(t, "127.0.0.1:0", tc.ask, false)
		if got := queueLimit(t, fd); got != tc.want {
			t.Errorf("Listen backlog %d: queue limit (Send-Q) %d, want %d", tc.ask, got, tc.want)
		}
	}
}

// TestSomaxconn: Somaxconn is the cap the kernel really applies to a
// listen backlog.
func TestSomaxconn(t *testing.T) {
	t.Parallel()
	if got, want := master.Somaxconn(), kernelBacklogCap(t); got != want {
		t.Errorf("Somaxconn() = %d, want %d, the largest accept queue the kernel gives a listener", got, want)
	}
}

func TestListenAddressInUse(t *testing.T) {
	t.Parallel()
	_, local := mustListen(t, "127.0.0.1:0", 0, false)
	goLn, err := net.Listen("tcp4", "127.0.0.1:0") // another program's socket
	if err != nil {
		t.Fatal(err)
	}
	defer goLn.Close()
	goAddr := goLn.Addr().String()
	_, group := mustListen(t, "127.0.0.1:0", 0, true)

	for _, tc := range []struct {
		name, addr string
		reuseport  bool
	}{
		{"plain on plain", local, false},
		{"reuseport on plain", local, true},
		{"plain on net.Listen", goAddr, false},
		{"reuseport on net.Listen", goAddr, true},
		{"plain on reuseport group", group, false},
	} {
		fd, err := master.Listen(tc.addr, 0, tc.reuseport)
		if err == nil {
			unix.Close(fd)
			t.Errorf("%s: Listen(%s) succeeded on a taken port", tc.name, tc.addr)
			continue
		}
		if fd != -1 {
			t.Errorf("%s: Listen failed but returned fd %d", tc.name, fd)
		}
		if err.Error() != inUse(tc.addr) {
			t.Errorf("%s: error %q, want %q", tc.name, err, inUse(tc.addr))
		}
	}
}

func TestListenBadAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1", `listen address "127.0.0.1": `},
		{"127.0.0.1:", `listen address "127.0.0.1:": bad port ""`},
		{"127.0.0.1:65536", `listen address "127.0.0.1:65536": bad port "65536"`},
		{"127.0.0.1:-1", `listen address "127.0.0.1:-1": bad port "-1"`},
		{"127.0.0.1:http", `listen address "127.0.0.1:http": bad port "http"`},
		{"[::1:80", `listen address "[::1:80": `},
	} {
		fd, err := master.Listen(tc.addr, 0, false)
		if err == nil {
			unix.Close(fd)
			t.Errorf("Listen(%q) succeeded", tc.addr)
			continue
		}
		if fd != -1 || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Listen(%q) = %d, %q; want -1 and an error starting %q", tc.addr, fd, err, tc.want)
		}
		if rfd, err := master.Reserve(tc.addr); err == nil || rfd != -1 {
			if err == nil {
				unix.Close(rfd)
			}
			t.Errorf("Reserve(%q) = %d, %v; want -1 and an error", tc.addr, rfd, err)
		}
	}
}

func TestListenIPv4Mapped(t *testing.T) {
	t.Parallel()
	// An IPv4-mapped IPv6 address is bound as plain IPv4.
	fd, local := mustListen(t, "[::ffff:127.0.0.1]:0", 0, false)
	checkSocket(t, fd, unix.AF_INET, true, false)
	if ap := netip.MustParseAddrPort(local); ap.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("LocalAddr = %s, want 127.0.0.1:port", local)
	}
}

func haveIPv6Loopback(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	ln.Close()
}

// listenNoPanic is Listen, with a panic turned into an error.
func listenNoPanic(addr string, backlog int, reuseport bool) (fd int, err error) {
	defer func() {
		if r := recover(); r != nil {
			fd, err = -1, fmt.Errorf("Listen(%q) panicked: %v", addr, r)
		}
	}()
	return master.Listen(addr, backlog, reuseport)
}

// TestListenIPv6Loopback: an IPv6 address gives an IPv6-only socket (a
// listen address was once taken as IPv4 first, which panicked).
func TestListenIPv6Loopback(t *testing.T) {
	t.Parallel()
	haveIPv6Loopback(t)
	fd, err := listenNoPanic("[::1]:0", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	closeFd(t, fd)
	checkSocket(t, fd, unix.AF_INET6, true, false)
	if v := sockopt(t, fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
		t.Errorf("IPV6_V6ONLY = %d, want 1", v)
	}
	local, err := master.LocalAddr(fd)
	if err != nil {
		t.Fatal(err)
	}
	if ap := netip.MustParseAddrPort(local); ap.Addr() != netip.IPv6Loopback() || ap.Port() == 0 {
		t.Errorf("LocalAddr = %s, want [::1]:port", local)
	}
	dialAccept(t, local, fd)
}

func TestListenHostname(t *testing.T) {
	t.Parallel()
	ips, err := net.LookupIP("localhost")
	if err != nil || len(ips) == 0 {
		t.Skipf("localhost does not resolve: %v", err)
	}
	first, _ := netip.AddrFromSlice(ips[0])
	first = first.Unmap()
	fd, err := listenNoPanic("localhost:0", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	closeFd(t, fd)
	local, err := master.LocalAddr(fd)
	if err != nil {
		t.Fatal(err)
	}
	if ap := netip.MustParseAddrPort(local); ap.Addr() != first {
		t.Errorf("Listen(localhost:0) bound %s, want the first address of localhost, %s", local, first)
	}
}

func TestReserveResolvesPortForChildren(t *testing.T) {
	t.Parallel()
	r, local := mustReserve(t, "127.0.0.1:0")
	checkSocket(t, r, unix.AF_INET, false, true)
	if portOf(t, local) == 0 {
		t.Fatalf("Reserve(127.0.0.1:0) left port 0")
	}
	// The reservation never takes connections itself.
	if _, _, err := unix.Accept4(r, unix.SOCK_CLOEXEC); err != unix.EINVAL {
		t.Errorf("accept on the reservation: %v, want EINVAL (not listening)", err)
	}
	// Children join with Listen(addr, reuseport) and get the connections.
	c1, a1 := mustListen(t, local, 0, true)
	c2, a2 := mustListen(t, local, 0, true)
	if a1 != local || a2 != local {
		t.Fatalf("children bound %s and %s, want %s", a1, a2, local)
	}
	for range 4 {
		dialAccept(t, local, c1, c2)
	}
	// With the children there, nobody else gets the port.
	if fd, err := master.Listen(local, 0, false); err == nil {
		unix.Close(fd)
		t.Errorf("plain Listen on a served reuseport port succeeded")
	}
	if fd, err := master.Reserve(local); err == nil {
		unix.Close(fd)
		t.Errorf("Reserve on a served reuseport port succeeded")
	}
}

// TestReserveFreePort: a free, explicit port goes through the plain-bind
// probe and is reserved. The port is never bound and released before the
// call (another test's bind(0) or connect could take it in between): the
// test asks Reserve directly for ports below the ephemeral range, which the
// kernel never hands out by itself, and takes the first one that nobody
// else holds.
func TestReserveFreePort(t *testing.T) {
	t.Parallel()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	span := low - 1024
	if span <= 0 {
		t.Skipf("no ports below the ephemeral range (it starts at %d)", low)
	}
	// Parallel test binaries start at different points.
	start := os.Getpid() % span
	for i := range min(span, 500) {
		local := "127.0.0.1:" + strconv.Itoa(1024+(start+i)%span)
		r, err := master.Reserve(local)
		if errors.Is(err, unix.EADDRINUSE) {
			continue // someone else's port
		}
		if err != nil {
			t.Fatalf("Reserve(%s): %v", local, err)
		}
		closeFd(t, r)
		checkSocket(t, r, unix.AF_INET, false, true)
		if got, err := master.LocalAddr(r); err != nil || got != local {
			t.Errorf("Reserve(%s) bound %s (%v)", local, got, err)
		}
		return
	}
	t.Fatalf("Reserve failed with \"address already in use\" on 500 ports below %d", low)
}

func TestReserveRefusesTakenPort(t *testing.T) {
	t.Parallel()
	_, plain := mustListen(t, "127.0.0.1:0", 0, false)
	_, group := mustListen(t, "127.0.0.1:0", 0, true) // another server's children
	goLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer goLn.Close()
	for name, addr := range map[string]string{
		"plain listener":            plain,
		"reuseport listener":        group,
		"net.Listen (SO_REUSEADDR)": goLn.Addr().String(),
	} {
		fd, err := master.Reserve(addr)
		if err == nil {
			unix.Close(fd)
			t.Errorf("Reserve(%s) held by a %s succeeded", addr, name)
			continue
		}
		if fd != -1 || err.Error() != inUse(addr) {
			t.Errorf("Reserve(%s) held by a %s = %d, %q; want -1, %q", addr, name, fd, err, inUse(addr))
		}
	}
}

// TestReserveKeepsPortFromOthers: while no child listens (at start, or while
// every child is down) the reservation alone holds the port. Linux lets two
// SO_REUSEADDR sockets share a port while neither listens, so a reservation
// with SO_REUSEADDR would let another server's Listen, Go's net.Listen or a
// second Reserve in, and the children's binds would then fail.
func TestReserveKeepsPortFromOthers(t *testing.T) {
	t.Parallel()
	_, local := mustReserve(t, "127.0.0.1:0")
	if fd, err := master.Reserve(local); err == nil {
		unix.Close(fd)
		t.Errorf("a second Reserve(%s) succeeded", local)
	}
	if ln, err := net.Listen("tcp4", local); err == nil {
		ln.Close()
		t.Errorf("net.Listen(%s) on a reserved port succeeded", local)
	}
	fd, err := master.Listen(local, 0, false)
	if err == nil {
		defer unix.Close(fd)
		t.Errorf("plain Listen(%s) on a reserved port succeeded", local)
		if c, err := master.Listen(local, 0, true); err != nil {
			t.Errorf("and then a child's Listen fails: %v", err)
		} else {
			unix.Close(c)
		}
	}
}

func TestLocalAddrNotASocket(t *testing.T) {
	t.Parallel()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = master.LocalAddr(int(f.Fd()))
	if !errors.Is(err, unix.ENOTSOCK) {
		t.Errorf("LocalAddr(/dev/null) error %v, want ENOTSOCK", err)
	}
}

// TestReserveBesideTimeWait: a server that closed its connections first
// leaves them in TIME_WAIT on its port for a minute. A restart in reuseport
// mode must still get the port: the reservation, which normally goes without
// SO_REUSEADDR, takes it when only such leftovers stand in the way.
func TestReserveBesideTimeWait(t *testing.T) {
	t.Parallel()
	ln, local := listen(t, "127.0.0.1:0", 0, false)
	c, err := net.DialTimeout("tcp", local, 2*time.Second)
	if err != nil {
		unix.Close(ln)
		t.Fatal(err)
	}
	var conn int
	for deadline := time.Now().Add(2 * time.Second); ; {
		conn, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != unix.EAGAIN || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	unix.Close(ln)
	if err != nil {
		c.Close()
		t.Fatalf("accept: %v", err)
	}
	// The server side closes first, so its socket ends in TIME_WAIT once
	// the client has closed too.
	unix.Close(conn)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	c.Read(make([]byte, 1)) // EOF
	c.Close()

	// Only a socket without SO_REUSEADDR is kept out by TIME_WAIT: make
	// sure the leftover is there, or the test would show nothing.
	blocked := false
	for deadline := time.Now().Add(2 * time.Second); !blocked && time.Now().Before(deadline); {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(local)
		err = unix.Bind(s, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
		unix.Close(s)
		blocked = errors.Is(err, unix.EADDRINUSE)
		if !blocked {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !blocked {
		t.Skip("no TIME_WAIT leftover on the port; nothing to show")
	}
	_, got := mustReserve(t, local)
	if got != local {
		t.Errorf("Reserve(%s) bound %s", local, got)
	}
	// The children can still join.
	child, _ := mustListen(t, local, 0, true)
	dialAccept(t, local, child)
}
