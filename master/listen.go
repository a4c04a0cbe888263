package master

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Listen opens a non-blocking, close-on-exec TCP listening socket on addr
// (host:port; the host may be a name, an IPv4 or an IPv6 address). backlog
// <= 0 means the kernel's maximum (net.core.somaxconn). With reuseport the
// socket joins the port's SO_REUSEPORT group, so that several processes
// can each hold one and the kernel spreads connections among them.
func Listen(addr string, backlog int, reuseport bool) (int, error) {
	fd, err := bind(addr, true, reuseport)
	if err != nil {
		return -1, err
	}
	if backlog <= 0 {
		backlog = somaxconn()
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError("listen", err))
	}
	return fd, nil
}

// bind opens a non-blocking TCP socket bound to addr. reuseaddr lets it bind
// beside connections left in TIME_WAIT by an earlier server.
func bind(addr string, reuseaddr, reuseport bool) (int, error) {
	ap, err := resolve(addr)
	if err != nil {
		return -1, err
	}
	var family int
	var sa unix.Sockaddr
	if ap.Addr().Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	fail := func(call string, err error) (int, error) {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return -1, fmt.Errorf("listen %s: %w", addr, err) // "address already in use"
		}
		return -1, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError(call, err))
	}
	if reuseaddr {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if reuseport {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if family == unix.AF_INET6 && !ap.Addr().Is4In6() {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	return fd, nil
}

// CheckListen checks the form of a listen address, unix:PATH or host:port
// with a port from 0 to 65535, without resolving the host: the address
// Listen (or ListenUnix) would not even try.
func CheckListen(addr string) error {
	if UnixPath(addr) != "" {
		return nil
	}
	_, _, err := splitListen(addr)
	return err
}

func splitListen(addr string) (host string, port uint16, err error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("listen address %q: %v", addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("listen address %q: bad port %q", addr, p)
	}
	return host, uint16(n), nil
}

func resolve(addr string) (netip.AddrPort, error) {
	host, p, err := splitListen(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if host == "" {
		host = "0.0.0.0"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.LookupIP(host)
		if lerr != nil || len(ips) == 0 {
			return netip.AddrPort{}, fmt.Errorf("listen address %q: cannot resolve %q", addr, host)
		}
		ip, _ = netip.AddrFromSlice(ips[0])
	}
	return netip.AddrPortFrom(ip.Unmap(), p), nil
}

// tuneListener sets the options of the fdpass TCP listener, which accepted
// sockets inherit:
//   - TCP_NODELAY always: responses go out in one write each, and Nagle
//     would hold the next one back; inherited, it spares every child a
//     setsockopt per connection (child.noDelay checks that it came).
//   - TCP_DEFER_ACCEPT when asked (-defer-accept). The kernel then completes
//     the accept only once the client has sent something, so the master and
//     the child wake once per connection instead of twice, and the child's
//     first read finds the request: about half the CPU per one-request
//     connection (scripts/bench, DEFERRED=1). The cost: a client that
//     connects and waits for the server to speak first is accepted only
//     after the kernel's SYN-ACK retransmit, about a second later.
//
// A reuseport child sets its own listener's TCP_NODELAY; a Unix socket has
// neither option. The socket says which it is, not -listen: one that
// socket activation passes may be a Unix socket whatever -listen names.
func tuneListener(lfd int, cfg Config) error {
	if cfg.Mode != ModeFdpass {
		return nil
	}
	if domain, err := unix.GetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return os.NewSyscallError("getsockopt SO_DOMAIN", err)
	} else if domain == unix.AF_UNIX {
		return nil
	}
	if err := unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return os.NewSyscallError("setsockopt TCP_NODELAY", err)
	}
	if cfg.DeferAccept <= 0 {
		return nil
	}
	secs := int(max(1, cfg.DeferAccept.Round(time.Second)/time.Second))
	return os.NewSyscallError("setsockopt TCP_DEFER_ACCEPT", unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs))
}

// somaxconn is the kernel's cap on a listen backlog.
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			return n
		}
	}
	return 4096
}

// localAddr returns the address a listening fd is bound to, as host:port.
func localAddr(fd int) (string, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", os.NewSyscallError("getsockname", err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String(), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String(), nil
	case *unix.SockaddrUnix:
		return UnixPrefix + a.Name, nil
	}
	return "", fmt.Errorf("getsockname: unexpected address %T", sa)
}

// reserve binds addr with SO_REUSEPORT without listening. In reuseport mode
// the master holds this socket: it claims the port (and resolves port 0) for
// the children, which bind the same address and listen, while the kernel
// never queues a connection on it, since it is not listening.
//
// The kernel lets any socket of the same user join a SO_REUSEPORT group, so a
// second server started on a port this one serves would silently share it.
// A bind without SO_REUSEPORT first fails if anyone holds the port.
//
// The reservation itself goes without SO_REUSEADDR: two sockets that both
// have it may share a port as long as neither listens, so with it any program
// could bind and listen on the port while no child is up. Without it only a
// SO_REUSEPORT socket of our user can join. Connections left in TIME_WAIT by
// an earlier server without SO_REUSEPORT also block such a bind; then, and
// only then (the probe, which has SO_REUSEADDR, got through), the reservation
// takes SO_REUSEADDR as well.
func reserve(addr string) (int, error) {
	probed := false
	if ap, err := resolve(addr); err == nil && ap.Port() != 0 {
		probe, err := bind(addr, true, false)
		if err != nil {
			return -1, err
		}
		unix.Close(probe)
		probed = true
	}
	fd, err := bind(addr, false, true)
	if errors.Is(err, unix.EADDRINUSE) && probed {
		return bind(addr, true, true)
	}
	return fd, err
}

// adopt takes over an inherited socket, checking that it suits mode: the
// master must hold a listening socket in fdpass mode and must not in
// reuseport mode (it would never accept what the kernel queues on it).
func adopt(fd int, mode string, backlog int) (int, error) {
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return -1, os.NewSyscallError("getsockopt", err)
	}
	switch {
	case mode == ModeFdpass && listening == 0:
		if backlog <= 0 {
			backlog = somaxconn()
		}
		if err := unix.Listen(fd, backlog); err != nil {
			return -1, os.NewSyscallError("listen", err)
		}
	case mode == ModeReuseport && listening != 0:
		return -1, errModeSwitch
	}
	return fd, nil
}

// errModeSwitch: in reuseport mode each child binds its own SO_REUSEPORT
// socket and the master holds only a bound, non-listening reservation of
// the port, so a listening socket handed over cannot be used: not by an
// upgrade from an fdpass master, nor by systemd socket activation.
var errModeSwitch = errors.New("the inherited socket is listening, and reuseport mode cannot serve one: " +
	"switch from fdpass to reuseport with a restart, not an upgrade; socket activation works in fdpass mode only")
