package child

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// v2 builds a PROXY v2 header: command, family byte, the address block
// and TLVs as given.
func v2(cmd, fam byte, addrs []byte, tlvs ...[]byte) string {
	b := append([]byte(nil), proxyV2Sig...)
	rest := slices.Concat(append([][]byte{addrs}, tlvs...)...)
	b = append(b, cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rest)))
	return string(append(b, rest...))
}

func tlv(typ byte, value string) []byte {
	return append(binary.BigEndian.AppendUint16([]byte{typ}, uint16(len(value))), value...)
}

var (
	v4addrs = []byte{192, 0, 2, 7, 10, 0, 0, 1, 0xd4, 0x31, 0, 80} // 192.0.2.7:54321 → 10.0.0.1:80
	v6addrs = slices.Concat(netip.MustParseAddr("2001:db8::7").AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice(),
		[]byte{0xd4, 0x31, 0x1f, 0x90})
	mapped = slices.Concat(netip.MustParseAddr("::ffff:192.0.2.9").AsSlice(), netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(),
		[]byte{0, 1, 0, 80})
)

// proxyCases are whole headers: n is the header's length (0 when the
// header is refused), src the client it gives ("" for none: LOCAL, UNKNOWN).
var proxyCases = []struct {
	name, raw, src string
	ok             bool
}{
	{"v1 tcp4", "PROXY TCP4 192.0.2.7 10.0.0.1 54321 80\r\n", "192.0.2.7:54321", true},
	{"v1 tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 54321 8080\r\n", "[2001:db8::7]:54321", true},
	{"v1 tcp6 full", "PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0007 ::1 1 2\r\n", "[2001:db8::7]:1", true},
	{"v1 tcp6 dotted", "PROXY TCP6 ::ffff:192.0.2.7 ::1 0 65535\r\n", "192.0.2.7:0", true},
	{"v1 unknown", "PROXY UNKNOWN\r\n", "", true},
	{"v1 unknown with addresses", "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", "", true},
	{"v1 longest", "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
		"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", true},
	{"v2 tcp4", v2(pp2Proxy, pp2TCP4, v4addrs), "192.0.2.7:54321", true},
	{"v2 udp4", v2(pp2Proxy, pp2UDP4, v4addrs), "192.0.2.7:54321", true},
	{"v2 tcp6", v2(pp2Proxy, pp2TCP6, v6addrs), "[2001:db8::7]:54321", true},
	{"v2 tcp6 mapped", v2(pp2Proxy, pp2TCP6, mapped), "192.0.2.9:1", true},
	{"v2 tlvs", v2(pp2Proxy, pp2TCP4, v4addrs, tlv(0x04, ""), tlv(0x05, "unique-id-1"), tlv(0x20, "\x01\x00\x00\x00\x00")), "192.0.2.7:54321", true},
	{"v2 local", v2(pp2Local, 0x00, nil), "", true},
	{"v2 local with addresses", v2(pp2Local, pp2TCP4, v4addrs), "", true},
	{"v2 unspec", v2(pp2Proxy, 0x00, []byte("ignored")), "", true},
	{"v2 unix", v2(pp2Proxy, 0x31, make([]byte, 216)), "", true},

	{"v1 lower case", "proxy TCP4 192.0.2.7 10.0.0.1 54321 80\r\n", "", false},
	{"v1 tcp5", "PROXY TCP5 192.0.2.7 10.0.0.1 54321 80\r\n", "", false},
	{"v1 two spaces", "PROXY TCP4  192.0.2.7 10.0.0.1 54321 80\r\n", "", false},
	{"v1 trailing space", "PROXY TCP4 192.0.2.7 10.0.0.1 54321 80 \r\n", "", false},
	{"v1 missing port", "PROXY TCP4 192.0.2.7 10.0.0.1 54321\r\n", "", false},
	{"v1 extra field", "PROXY TCP4 192.0.2.7 10.0.0.1 54321 80 9\r\n", "", false},
	{"v1 v6 in tcp4", "PROXY TCP4 ::1 ::1 1 2\r\n", "", false},
	{"v1 v4 in tcp6", "PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n", "", false},
	{"v1 octet", "PROXY TCP4 192.0.2.256 10.0.0.1 1 2\r\n", "", false},
	{"v1 leading zero", "PROXY TCP4 192.0.2.07 10.0.0.1 1 2\r\n", "", false},
	{"v1 port range", "PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n", "", false},
	{"v1 port zero", "PROXY TCP4 192.0.2.7 10.0.0.1 080 2\r\n", "", false},
	{"v1 zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "", false},
	{"v1 bare LF", "PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n", "", false},
	{"v1 CR without LF", "PROXY TCP4 192.0.2.7 10.0.0.1 1 2\rX", "", false},
	{"v1 NUL", "PROXY TCP4 192.0.2.7\x00 10.0.0.1 1 2\r\n", "", false},
	{"v1 too long", "PROXY UNKNOWN " + strings.Repeat("x", 100) + "\r\n", "", false},
	{"v2 version 1", "\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + string(v4addrs), "", false},
	{"v2 command 2", "\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + string(v4addrs), "", false},
	{"v2 family 4", v2(pp2Proxy, 0x41, v4addrs), "", false},
	{"v2 transport 3", v2(pp2Proxy, 0x13, v4addrs), "", false},
	{"v2 short addresses", v2(pp2Proxy, pp2TCP6, v4addrs), "", false},
	{"v2 tlv overruns", v2(pp2Proxy, pp2TCP4, v4addrs, []byte{0x04, 0, 9, 1}), "", false},
	{"v2 tlv header cut", v2(pp2Proxy, pp2TCP4, v4addrs, []byte{0x04, 0}), "", false},
	{"v2 too long", v2(pp2Proxy, pp2TCP4, v4addrs, tlv(0x04, strings.Repeat("x", proxyV2Max))), "", false},
	{"http", "GET / HTTP/1.1\r\n", "", false},
	{"almost v2", "\r\n\r\n\x00\r\nQUIT\r", "", false},
}

func TestProxyHeaders(t *testing.T) {
	for _, c := range proxyCases {
		var src netip.AddrPort
		n := parseProxy([]byte(c.raw), &src)
		switch {
		case c.ok && n != len(c.raw):
			t.Errorf("%s: %d, want the whole header, %d bytes", c.name, n, len(c.raw))
		case !c.ok && n >= 0:
			t.Errorf("%s: %d, want -1", c.name, n)
		case c.ok && c.src == "" && src.IsValid():
			t.Errorf("%s: gives %v, want no address", c.name, src)
		case c.ok && c.src != "" && src.String() != c.src:
			t.Errorf("%s: gives %v, want %s", c.name, src, c.src)
		}
		// What follows a header is not the header's business.
		if c.ok {
			var again netip.AddrPort
			if n := parseProxy([]byte(c.raw+"GET / HTTP/1.1\r\n\r\n"), &again); n != len(c.raw) || again != src {
				t.Errorf("%s with a request behind it: %d %v, want %d %v", c.name, n, again, len(c.raw), src)
			}
		}
	}
}

// A header cut anywhere waits for the rest: no prefix of a valid header is
// refused or taken for a header, and no prefix of one that is refused is
// taken for a header.
func TestProxySplitPoints(t *testing.T) {
	for _, c := range proxyCases {
		raw := []byte(c.raw)
		for k := 0; k < len(raw); k++ {
			var src netip.AddrPort
			n := parseProxy(slices.Clone(raw[:k]), &src)
			if n > 0 || c.ok && n != 0 {
				t.Errorf("%s: prefix of %d bytes %q gives %d", c.name, k, raw[:k], n)
				break
			}
		}
	}
}

func TestProxySignature(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{
		{"", 0}, {"P", 0}, {"PROXY", 0}, {"PROXY ", 1}, {"PROXY TCP4", 1}, {"POST", -1}, {"PROXZ", -1},
		{"\r\n", 0}, {"\r\n\r\n\x00\r\nQUI", 0}, {"\r\n\r\n\x00\r\nQUIT\n", 1}, {"\r\n\r\nGET", -1}, {"GET", -1},
	} {
		if got := proxySignature([]byte(c.in)); got != c.want {
			t.Errorf("%q: %d, want %d", c.in, got, c.want)
		}
	}
}

// The address parsers agree with net/netip on every input (zones aside,
// which a PROXY header has no use for).
func FuzzProxyAddr(f *testing.F) {
	for _, s := range []string{"1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3", "1.2.3.4.5", "::", "::1", "1::",
		"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4", "::ffff:1.2.3.4", "1::2::3",
		"12345::", ":1", "1:", "fe80::1%eth0", "1:2:3:4:5:6:7:8:9", "::1.2.3.4", "1.2.3.4::", "abcd:EF01::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := netip.ParseAddr(s)
		a4, ok4 := parseIPv4([]byte(s))
		if ok4 != (err == nil && want.Is4()) || ok4 && a4 != want {
			t.Fatalf("parseIPv4(%q) = %v %v; netip: %v %v", s, a4, ok4, want, err)
		}
		a6, ok6 := parseIPv6([]byte(s))
		if ok6 != (err == nil && want.Is6() && want.Zone() == "") || ok6 && a6 != want {
			t.Fatalf("parseIPv6(%q) = %v %v; netip: %v %v", s, a6, ok6, want, err)
		}
	})
}

// FuzzProxyHeader checks the header parser on arbitrary input: it never
// panics; a header it takes lies within the input and its bounds, every
// prefix of it waits for more, and whatever follows does not change it; an
// input it waits on is shorter than the longest header.
//
//	go test -run=NONE -fuzz=FuzzProxyHeader ./child
func FuzzProxyHeader(f *testing.F) {
	for _, c := range proxyCases {
		f.Add([]byte(c.raw))
		f.Add([]byte(c.raw + "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var src netip.AddrPort
		n := parseProxy(slices.Clone(data), &src)
		switch {
		case n < -1 || n > len(data):
			t.Fatalf("%d of %d bytes", n, len(data))
		case n == 0 && len(data) >= proxyV2Max:
			t.Fatalf("waits on %d bytes", len(data))
		case n > 0 && data[0] == 'P' && n > proxyV1Max, n > proxyV2Max:
			t.Fatalf("a header of %d bytes", n)
		}
		if n <= 0 {
			return
		}
		for k := 0; k < n; k++ {
			var s netip.AddrPort
			if m := parseProxy(slices.Clone(data[:k]), &s); m != 0 {
				t.Fatalf("prefix of %d bytes of a %d-byte header gives %d", k, n, m)
			}
		}
		var again netip.AddrPort
		if m := parseProxy(append(slices.Clone(data[:n]), "\x00junk"...), &again); m != n || again != src {
			t.Fatalf("header followed by junk: %d %v, want %d %v", m, again, n, src)
		}
	})
}

// echoRemote answers with the client's address as the child sees it
// (without allocating: the tests are not parallel).
func echoRemote(w *Response, r *Request) {
	w.Write(r.RemoteAddr().AppendTo(remoteText[:0]))
}

var remoteText [64]byte

// proxySession is a session serving one end of a socketpair (a Unix-socket
// peer: a balancer, so a header is due) with echoRemote.
func proxySession(t *testing.T, state uint8) (*session, *conn, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "client")
	t.Cleanup(func() {
		unix.Close(fds[0])
		peer.Close()
	})
	lim, to := DefaultLimits, DefaultTimeouts
	s := newSession(HandlerFunc(echoRemote), new(ipc.Cell), &lim, &to, new(atomic.Bool))
	c := &conn{fd: fds[0], proxy: state, state: stReading}
	c.deadline = s.clk.now.Add(to.Header).UnixNano()
	peer0, _ := peerOf(fds[0])
	c.peer, c.port, c.peerKnown = peer0.Addr(), peer0.Port(), true
	return s, c, peer
}

// feed writes p to the client end and lets the session serve what arrived.
func feed(t *testing.T, s *session, c *conn, peer *os.File, p []byte) action {
	t.Helper()
	if len(p) > 0 {
		if _, err := peer.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	return s.serve(c)
}

// readAll is what the session wrote to the client so far.
func readAll(peer *os.File) string {
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(int(peer.Fd()), buf)
		if n <= 0 || err != nil {
			return string(b)
		}
		b = append(b, buf[:n]...)
	}
}

// Every valid header with a request behind it, cut at every byte into two
// reads, gives the request the header's client (the socket's own peer for
// LOCAL and UNKNOWN), and a deadline that is still the first one until the
// request is complete.
func TestProxySessionSplitPoints(t *testing.T) {
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, pc := range proxyCases {
		if !pc.ok {
			continue
		}
		raw := []byte(pc.raw + req)
		want := pc.src
		if want == "" {
			want = "" // a Unix-socket peer has no address
		}
		for k := 0; k <= len(raw); k++ {
			s, c, peer := proxySession(t, pxWant)
			first := c.deadline
			if a := feed(t, s, c, peer, raw[:k]); a != aRead {
				t.Fatalf("%s: first %d bytes: action %d", pc.name, k, a)
			}
			if k < len(pc.raw) && c.deadline != first {
				t.Fatalf("%s: first %d bytes moved the header deadline", pc.name, k)
			}
			if a := feed(t, s, c, peer, raw[k:]); a != aRead {
				t.Fatalf("%s: cut at %d: action %d", pc.name, k, a)
			}
			out := readAll(peer)
			if !strings.HasSuffix(out, "\r\n\r\n"+want) {
				t.Fatalf("%s: cut at %d: answer %q, want a body of %q", pc.name, k, out, want)
			}
			if c.in != nil || c.proxy != pxTaken {
				t.Fatalf("%s: cut at %d: keeps %d bytes, proxy state %d", pc.name, k, len(c.in), c.proxy)
			}
		}
	}
}

// A malformed header from a balancer, and any header from elsewhere, closes
// the connection without an answer; a request from elsewhere without one is
// served, however it is cut.
func TestProxySessionRefuses(t *testing.T) {
	for _, pc := range proxyCases {
		if pc.ok || pc.name == "http" {
			continue
		}
		s, c, peer := proxySession(t, pxWant)
		a := feed(t, s, c, peer, []byte(pc.raw+"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		if out := readAll(peer); a != aClose || out != "" {
			t.Errorf("%s from a balancer: action %d, answer %q; want a close and nothing", pc.name, a, out)
		}
	}
	for _, pc := range proxyCases {
		if !pc.ok {
			continue
		}
		raw := []byte(pc.raw)
		for k := 0; k < len(raw); k++ {
			s, c, peer := proxySession(t, pxRefuse)
			a := feed(t, s, c, peer, raw[:k])
			if a != aClose {
				a = feed(t, s, c, peer, raw[k:])
			}
			if out := readAll(peer); a != aClose || out != "" {
				t.Fatalf("%s from elsewhere, cut at %d: action %d, answer %q; want a close and nothing", pc.name, k, a, out)
			}
		}
	}
	req := []byte("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	for k := 0; k <= len(req); k++ {
		s, c, peer := proxySession(t, pxRefuse)
		feed(t, s, c, peer, req[:k])
		if a := feed(t, s, c, peer, req[k:]); a != aRead {
			t.Fatalf("a request from elsewhere cut at %d: action %d", k, a)
		}
		if out := readAll(peer); !strings.HasPrefix(out, "HTTP/1.1 200 ") {
			t.Fatalf("a request from elsewhere cut at %d: answer %q", k, out)
		}
	}
}

// Taking a header and answering the request behind it allocates nothing,
// nor does looking up the peer.
func TestProxyAllocatesNothing(t *testing.T) {
	s, c, peer := proxySession(t, pxWant)
	raw := []byte(v2(pp2Proxy, pp2TCP6, v6addrs) + "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	v1 := []byte("PROXY TCP6 2001:db8::7 2001:db8::1 54321 8080\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 4096)
	run := func(raw []byte) func() {
		return func() {
			c.proxy = pxWant
			unix.Write(int(peer.Fd()), raw)
			if a := s.serve(c); a != aRead {
				t.Fatalf("action %d", a)
			}
			unix.Read(int(peer.Fd()), buf)
		}
	}
	run(raw)()
	for name, f := range map[string]func(){"v2": run(raw), "v1": run(v1), "peer": func() { peerOf(c.fd) }} {
		if allocs := testing.AllocsPerRun(200, f); allocs != 0 {
			t.Errorf("%s: %v allocations, want 0", name, allocs)
		}
	}
}

// Through a child: a balancer's header names the client for the handler
// and the access log; a header from anyone else closes the
// connection; a request from anyone else is served with its own address.
func TestProxyThroughChild(t *testing.T) {
	dir := t.TempDir()
	alog, err := OpenAccessLog(dir + "/access.log")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{AccessLog: alog, Proxy: &ProxyConfig{From: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}}
	tc := startChild(t, cfg, HandlerFunc(echoRemote))
	dialFrom := func(from string) *client {
		return tc.dialWith(t, &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}})
	}

	lb := dialFrom("127.0.0.2")
	lb.send(t, "PROXY TCP4 198.51.100.4 127.0.0.1 40000 80\r\n")
	if r := lb.roundTrip(t, "/"); string(r.body) != "198.51.100.4:40000" {
		t.Errorf("through the balancer: RemoteAddr %q", r.body)
	}
	if r := lb.roundTrip(t, "/again"); string(r.body) != "198.51.100.4:40000" {
		t.Errorf("second request: RemoteAddr %q", r.body)
	}

	other := dialFrom("127.0.0.3")
	other.send(t, "PROXY TCP4 198.51.100.5 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if b, err := other.br.ReadByte(); err == nil {
		t.Errorf("a header from 127.0.0.3 was answered: %q", b)
	}

	direct := dialFrom("127.0.0.3")
	if r := direct.roundTrip(t, "/"); !strings.HasPrefix(string(r.body), "127.0.0.3:") {
		t.Errorf("a request from 127.0.0.3: RemoteAddr %q", r.body)
	}
	tc.stop(t)
	log, _ := os.ReadFile(dir + "/access.log")
	if !bytes.HasPrefix(log, []byte("198.51.100.4 - - ")) || !bytes.Contains(log, []byte("\n127.0.0.3 - - ")) ||
		bytes.Contains(log, []byte("198.51.100.5")) {
		t.Errorf("access log:\n%s", log)
	}
}

// A connection handed back to the master carries its client in a header of
// its own in front of the bytes already read, which the next child takes as
// it would the balancer's; one that never had a header carries nothing.
func TestProxyCarried(t *testing.T) {
	for _, pc := range proxyCases {
		if !pc.ok {
			continue
		}
		s, c, peer := proxySession(t, pxWant)
		feed(t, s, c, peer, []byte(pc.raw+"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next"))
		readAll(peer)
		if len(c.in)+c.carryLen() > len("GET /next")+52 {
			t.Fatalf("%s: carryLen %d", pc.name, c.carryLen())
		}
		want := c.remote()
		c.carryProxy()
		var src netip.AddrPort
		n := parseProxy(c.in, &src)
		if n <= 0 || src != want || string(c.in[n:]) != "GET /next" || c.proxy != pxWant {
			t.Fatalf("%s: carried %q (%d, %v), state %d; want %v then GET /next", pc.name, c.in, n, src, c.proxy, want)
		}
	}
	s, c, peer := proxySession(t, pxRefuse)
	feed(t, s, c, peer, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next"))
	c.carryProxy()
	if string(c.in) != "GET /next" || c.carryLen() != 0 {
		t.Fatalf("no header: carried %q", c.in)
	}
}
