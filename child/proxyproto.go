package child

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PROXY protocol (versions 1 and 2, haproxy.org's proxy-protocol.txt): a
// balancer that relays a client's connection first sends one header with
// the client's address. With Config.Proxy set, a child reads it, without
// allocating, before the connection's first request:
//
//   - a connection from a balancer that Proxy.From names (or, on a
//     Unix-socket listener, any connection: the socket's mode says who may
//     connect) must start with a header; a malformed one, or none within
//     the header timeout, closes the connection without an answer;
//   - a connection from anyone else is served as it is, but one that starts
//     with a header is closed: nobody else may say who the client is.
//
// The address the header carries is the connection's client from then on,
// for the access log, Request.RemoteAddr and the request published in the
// stats cell. A LOCAL (v2) or UNKNOWN (v1) header, such as a balancer's
// health check sends, leaves the connection's own peer in place.

// ProxyConfig turns on PROXY protocol headers.
type ProxyConfig struct {
	// From lists the balancers whose connections must send a header.
	From []netip.Prefix
}

// Where a connection stands with its PROXY header.
const (
	pxNone   uint8 = iota // nothing is expected: HTTP from the first byte
	pxTaken               // the balancer's header was read: HTTP follows
	pxWant                // from a balancer: a header comes first
	pxRefuse              // from anyone else: a header is refused
)

const (
	proxyV1Max = 107 // the longest v1 line, CRLF included
	// proxyV2Max bounds a v2 header, addresses and TLVs included: what a
	// balancer sends fits many times over; a larger one is refused.
	proxyV2Max = bufSize
)

var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// admit records where a new connection comes from and, with Proxy set,
// whether a PROXY header is due. The peer is looked up only when something
// needs it at once; Request.RemoteAddr looks it up otherwise.
func (l *loop) admit(c *conn) {
	px := l.cfg.Proxy
	if px == nil {
		if l.cfg.AccessLog != nil {
			c.remote()
		}
		return
	}
	peer, local := peerOf(c.fd)
	c.peer, c.port, c.peerKnown = peer.Addr(), peer.Port(), true
	switch {
	case local:
		c.proxy = pxWant // a Unix socket's peers are all balancers
	case trusted(px.From, c.peer):
		c.proxy = pxWant
	default:
		c.proxy = pxRefuse
	}
}

func trusted(from []netip.Prefix, a netip.Addr) bool {
	for _, p := range from {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// remote is the connection's client, looked up once.
func (c *conn) remote() netip.AddrPort {
	if !c.peerKnown && !c.borrowed {
		peer, _ := peerOf(c.fd)
		c.peer, c.port, c.peerKnown = peer.Addr(), peer.Port(), true
	}
	if !c.peer.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(c.peer, c.port)
}

// knownRemote is the connection's client if it was looked up already (a
// PROXY header, the access log), for the request published in the stats
// cell; it costs no system call.
func (c *conn) knownRemote() netip.AddrPort {
	if !c.peerKnown || !c.peer.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(c.peer, c.port)
}

// takeProxy deals with the PROXY header a connection owes (pxWant) or may
// not send (pxRefuse), at the start of what it has read. It returns the
// input after the header; when the connection cannot go on to HTTP yet
// (more of the header to come, or refused), ok is false and a says what the
// connection does next.
func (s *session) takeProxy(c *conn, in []byte, own bool) (rest []byte, a action, ok bool) {
	var n int
	var src netip.AddrPort
	if c.proxy == pxRefuse {
		n = proxySignature(in)
	} else {
		n = parseProxy(in, &src)
	}
	switch {
	case n < 0 && c.proxy == pxRefuse:
		c.proxy = pxNone // no header: HTTP
		return in, aRead, true
	case n < 0, c.proxy == pxRefuse && n > 0:
		return nil, aClose, false
	case n == 0:
		deadline := c.deadline // the header timeout runs from the accept
		s.keepPartial(c, in, own)
		c.deadline = deadline
		return nil, aRead, false
	}
	if src.IsValid() {
		c.peer, c.port = src.Addr(), src.Port()
	}
	c.proxy = pxTaken
	in = in[n:]
	if len(in) == 0 {
		if c.in != nil {
			putBuf(c.in)
			c.in = nil
		}
		return nil, aRead, false // deadline: still the header timeout
	}
	return in, aRead, true
}

// proxySignature reports whether b starts with the signature of a PROXY
// header of either version (1), may still turn out to (0), or does not (-1).
func proxySignature(b []byte) int {
	v1, v2 := prefixState(b, proxyV1Sig), prefixState(b, proxyV2Sig)
	switch {
	case v1 > 0 || v2 > 0:
		return 1
	case v1 == 0 || v2 == 0:
		return 0
	}
	return -1
}

// prefixState compares b with sig: b starts with sig (1), b is a proper
// prefix of sig (0), or neither (-1).
func prefixState(b, sig []byte) int {
	k := min(len(b), len(sig))
	if string(b[:k]) != string(sig[:k]) {
		return -1
	}
	if k == len(sig) {
		return 1
	}
	return 0
}

// parseProxy reads a PROXY header, of either version, at the start of b. It
// returns its length, with the source address it carries in *src (left
// invalid for a LOCAL or UNKNOWN header, and for a source that is not an IP
// address); 0 while b is a prefix of what may still be a valid header; -1
// when it is not one.
func parseProxy(b []byte, src *netip.AddrPort) int {
	if len(b) > 0 && b[0] == 'P' {
		return parseProxyV1(b, src)
	}
	return parseProxyV2(b, src)
}

// parseProxyV1 reads "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or
// "PROXY UNKNOWN[ anything]\r\n", at most proxyV1Max bytes.
func parseProxyV1(b []byte, src *netip.AddrPort) int {
	if st := prefixState(b, proxyV1Sig); st <= 0 {
		return st
	}
	end := -1 // where CR stands: at most proxyV1Max-2
	for i := len(proxyV1Sig); i < len(b) && i < proxyV1Max-1; i++ {
		switch c := b[i]; {
		case c == '\r':
			if i+1 < len(b) && b[i+1] != '\n' {
				return -1
			}
			end = i
		case c < ' ' || c > '~':
			return -1
		}
		if end >= 0 {
			break
		}
	}
	if end < 0 {
		if len(b) >= proxyV1Max-1 {
			return -1
		}
		return 0 // the line is not complete; what came so far may do
	}
	if end+1 >= len(b) {
		return 0 // CR, and the LF still to come
	}
	line := b[len(proxyV1Sig):end]
	proto, line := cutField(line)
	switch string(proto) {
	case "UNKNOWN":
		return end + 2 // the rest of the line is to be ignored
	case "TCP4", "TCP6":
	default:
		return -1
	}
	sa, line := cutField(line)
	da, line := cutField(line)
	sp, line := cutField(line)
	dp, line := cutField(line)
	if line != nil {
		return -1 // more fields, or a stray space
	}
	var s, d netip.Addr
	var ok bool
	if proto[3] == '4' {
		if s, ok = parseIPv4(sa); !ok {
			return -1
		}
		if d, ok = parseIPv4(da); !ok {
			return -1
		}
	} else {
		if s, ok = parseIPv6(sa); !ok {
			return -1
		}
		if d, ok = parseIPv6(da); !ok {
			return -1
		}
	}
	sport, ok1 := parsePort(sp)
	_, ok2 := parsePort(dp)
	if !ok1 || !ok2 || !d.IsValid() {
		return -1
	}
	*src = netip.AddrPortFrom(s.Unmap(), sport)
	return end + 2
}

// cutField cuts b at its first space: the field before it and what follows
// (nil when there is no space; empty when the space ends b).
func cutField(b []byte) (f, rest []byte) {
	for i, c := range b {
		if c == ' ' {
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}

// parsePort reads a decimal port without leading zeros.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || len(b) > 1 && b[0] == '0' {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// parseIPv4 reads a dotted quad, as netip.ParseAddr does (no leading
// zeros), without allocating.
func parseIPv4(b []byte) (netip.Addr, bool) {
	var a [4]byte
	if !ipv4Into(b, &a) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(a), true
}

func ipv4Into(b []byte, a *[4]byte) bool {
	k, n, digits := 0, 0, 0
	for i := 0; i <= len(b); i++ {
		if i == len(b) || b[i] == '.' {
			if digits == 0 || k == 4 {
				return false
			}
			a[k] = byte(n)
			k, n, digits = k+1, 0, 0
			continue
		}
		c := b[i]
		if c < '0' || c > '9' || digits > 0 && n == 0 {
			return false // not a digit, or a leading zero
		}
		n = n*10 + int(c-'0')
		digits++
		if n > 255 {
			return false
		}
	}
	return k == 4
}

// parseIPv6 reads an IPv6 address in the text forms of RFC 4291 (groups of
// up to four hex digits, one "::", a dotted quad in the last 32 bits), as
// netip.ParseAddr does, but with no zone and without allocating.
func parseIPv6(b []byte) (netip.Addr, bool) {
	var a [16]byte
	ellipsis := -1 // where "::" stands, in bytes of a
	i, k := 0, 0
	if len(b) >= 2 && b[0] == ':' && b[1] == ':' {
		ellipsis, i = 0, 2
		if len(b) == 2 {
			return netip.AddrFrom16(a), true
		}
	}
	for i < len(b) {
		// A group, or a dotted quad for the last 32 bits.
		n, digits := 0, 0
		for j := i; j < len(b) && digits < 5; j++ {
			v := unhex(b[j])
			if v < 0 {
				break
			}
			n = n<<4 | v
			digits++
		}
		if digits == 0 || digits > 4 {
			return netip.Addr{}, false
		}
		if i+digits < len(b) && b[i+digits] == '.' {
			if k > 12 {
				return netip.Addr{}, false
			}
			var q [4]byte
			if !ipv4Into(b[i:], &q) {
				return netip.Addr{}, false
			}
			copy(a[k:], q[:])
			k += 4
			i = len(b)
			break
		}
		if k > 14 {
			return netip.Addr{}, false
		}
		a[k], a[k+1] = byte(n>>8), byte(n)
		k += 2
		i += digits
		if i == len(b) {
			break
		}
		if b[i] != ':' || i+1 == len(b) {
			return netip.Addr{}, false
		}
		i++
		if b[i] == ':' {
			if ellipsis >= 0 {
				return netip.Addr{}, false // a second "::"
			}
			ellipsis = k
			i++
			if i == len(b) {
				break
			}
		}
	}
	switch {
	case ellipsis >= 0:
		if k == 16 {
			return netip.Addr{}, false // "::" must stand for at least one group
		}
		n := 16 - k
		copy(a[ellipsis+n:], a[ellipsis:k])
		clear(a[ellipsis : ellipsis+n])
	case k != 16:
		return netip.Addr{}, false
	}
	return netip.AddrFrom16(a), true
}

// PROXY v2: the signature, version and command, family and transport, the
// length of what follows, the addresses, then TLVs.
const (
	pp2Local = 0x20
	pp2Proxy = 0x21
	pp2TCP4  = 0x11
	pp2UDP4  = 0x12
	pp2TCP6  = 0x21
	pp2UDP6  = 0x22
)

func parseProxyV2(b []byte, src *netip.AddrPort) int {
	if st := prefixState(b, proxyV2Sig); st <= 0 {
		return st
	}
	if len(b) > 12 && b[12] != pp2Local && b[12] != pp2Proxy {
		return -1
	}
	if len(b) > 13 && b[13]&0x0f > 2 || len(b) > 13 && b[13]>>4 > 3 {
		return -1 // neither unspecified, stream nor datagram; nor a known family
	}
	if len(b) < 16 {
		return 0
	}
	total := 16 + int(binary.BigEndian.Uint16(b[14:]))
	if total > proxyV2Max {
		return -1
	}
	var addrLen int
	switch b[13] {
	case pp2TCP4, pp2UDP4:
		addrLen = 12
	case pp2TCP6, pp2UDP6:
		addrLen = 36
	case 0x31, 0x32: // AF_UNIX: two 108-byte paths
		addrLen = 216
	}
	if total < 16+addrLen {
		return -1
	}
	if len(b) < total {
		return 0
	}
	// TLVs must tile what follows the addresses, when the family says
	// where those end.
	for t := b[16+addrLen : total]; b[13] != 0 && len(t) > 0; {
		if len(t) < 3 {
			return -1
		}
		n := 3 + int(binary.BigEndian.Uint16(t[1:]))
		if n > len(t) {
			return -1
		}
		t = t[n:]
	}
	if b[12] == pp2Local {
		return total // the balancer's own connection: its address stands
	}
	a := b[16:]
	switch b[13] {
	case pp2TCP4, pp2UDP4:
		*src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:]))
	case pp2TCP6, pp2UDP6:
		*src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])).Unmap(), binary.BigEndian.Uint16(a[32:]))
	}
	return total
}

// carryLen is how many bytes carryProxy puts in front of c.in.
func (c *conn) carryLen() int {
	if c.proxy != pxTaken {
		return 0
	}
	if c.peer.Is4() {
		return 16 + 12
	}
	return 16 + 36
}

// carryProxy puts a PROXY v2 header in front of what c has read, when its
// client came from a balancer's header: a connection handed back to the
// master comes from the balancer's address, and the child it is dealt to
// must be told the client again (handback.go).
func (c *conn) carryProxy() {
	if c.proxy != pxTaken {
		return
	}
	b := AppendProxyV2(getBuf(c.carryLen()+len(c.in)), c.remote())
	b = append(b, c.in...)
	if c.in != nil {
		putBuf(c.in)
	}
	c.in = b
	c.proxy = pxWant // as the next child sees it
}

// AppendProxyV2 appends a PROXY v2 header that gives src as the client's
// address (LOCAL when src is invalid).
func AppendProxyV2(b []byte, src netip.AddrPort) []byte {
	b = append(b, proxyV2Sig...)
	switch {
	case !src.IsValid():
		return append(b, pp2Local, 0, 0, 0)
	case src.Addr().Is4():
		a := src.Addr().As4()
		b = append(b, pp2Proxy, pp2TCP4, 0, 12)
		b = append(b, a[:]...)
		b = append(b, 0, 0, 0, 0) // the destination is not kept
		b = binary.BigEndian.AppendUint16(b, src.Port())
		return append(b, 0, 0)
	default:
		a := src.Addr().As16()
		b = append(b, pp2Proxy, pp2TCP6, 0, 36)
		b = append(b, a[:]...)
		var none [16]byte // the destination is not kept
		b = append(b, none[:]...)
		b = binary.BigEndian.AppendUint16(b, src.Port())
		return append(b, 0, 0)
	}
}

// peerOf is getpeername without allocating: the peer's IP address and port,
// IPv4-mapped addresses unmapped; local is true for a Unix-socket peer.
func peerOf(fd int) (ap netip.AddrPort, local bool) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return netip.AddrPort{}, false
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		port := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), binary.BigEndian.Uint16(port[:])), false
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		port := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), binary.BigEndian.Uint16(port[:])), false
	case unix.AF_UNIX:
		return netip.AddrPort{}, true
	}
	return netip.AddrPort{}, false
}
