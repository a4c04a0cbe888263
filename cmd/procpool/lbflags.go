package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/master"
)

// lbSettings are the flags for running behind a load balancer: the drain it
// can follow (-shutdown-delay, with /readyz on -admin), PROXY protocol
// headers (-proxy-protocol, -proxy-from) and a Unix-socket listener
// (-listen unix:PATH, -listen-mode).
type lbSettings struct {
	shutdownDelay time.Duration
	proxy         bool
	proxyFrom     string
	listenMode    modeFlag
	from          []netip.Prefix // proxyFrom parsed by validate
}

// The children read PROXY headers, so they get those flags.
func init() { childFlags = append(childFlags, "proxy-protocol", "proxy-from") }

func (l *lbSettings) register(fs *flag.FlagSet) {
	fs.DurationVar(&l.shutdownDelay, "shutdown-delay", 0, "on SIGTERM or SIGQUIT, report not ready on -admin's /readyz at once and keep serving, every answer with Connection: close, for this long before the graceful stop")
	fs.BoolVar(&l.proxy, "proxy-protocol", false, "read a PROXY protocol header (v1 or v2) from the balancers -proxy-from names, and take the client's address from it")
	fs.StringVar(&l.proxyFrom, "proxy-from", "", "the balancers that must send a PROXY header, as `CIDR,...` (an address alone is one host); a header from anyone else closes the connection")
	l.listenMode = modeFlag(master.DefaultListenMode)
	fs.Var(&l.listenMode, "listen-mode", "file `mode` of a Unix-socket listener (-listen unix:PATH), in octal")
}

// validate checks the load-balancer flags against each other and against
// -listen and -mode.
func (l *lbSettings) validate(listen, mode string) error {
	bad := func(flag, format string, a ...any) error {
		return &usageError{msg: fmt.Sprintf(format, a...), flag: flag}
	}
	if path, ok := strings.CutPrefix(listen, master.UnixPrefix); ok {
		switch {
		case path == "":
			return bad("listen", "-listen unix:PATH: the path is missing")
		case mode == master.ModeReuseport:
			return bad("mode", "-listen %s cannot be served in reuseport mode: each child binds its own SO_REUSEPORT TCP socket, "+
				"which a Unix socket cannot share; use -mode fdpass", listen)
		}
	}
	l.from = l.from[:0]
	for _, s := range strings.Split(l.proxyFrom, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				return bad("proxy-from", "-proxy-from: want CIDR,... (10.0.0.0/8,192.0.2.7), got %q", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		l.from = append(l.from, p.Masked())
	}
	switch {
	case l.shutdownDelay < 0:
		return bad("shutdown-delay", "-shutdown-delay: must not be negative, got %v", l.shutdownDelay)
	case !l.proxy && len(l.from) > 0:
		return bad("proxy-from", "-proxy-from names balancers for -proxy-protocol, which is off")
	case l.proxy && len(l.from) == 0 && master.UnixPath(listen) == "":
		return bad("proxy-protocol", "-proxy-protocol needs -proxy-from CIDR,... naming the balancers allowed to send the header")
	}
	return nil
}

// proxyConfig is the children's child.Config.Proxy: nil when off. On a
// Unix-socket listener every peer must send a header (the socket's mode
// says who may connect).
func (l *lbSettings) proxyConfig() *child.ProxyConfig {
	if !l.proxy {
		return nil
	}
	return &child.ProxyConfig{From: l.from}
}

// apply sets the master's part.
func (l *lbSettings) apply(cfg *master.Config) {
	cfg.ShutdownDelay = l.shutdownDelay
	cfg.ListenMode = os.FileMode(l.listenMode)
}

// modeFlag is a file mode written in octal: -listen-mode 0660.
type modeFlag os.FileMode

func (f *modeFlag) String() string { return fmt.Sprintf("%#o", uint32(*f)) }

func (f *modeFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v == 0 || v > 0o777 {
		return fmt.Errorf("want permission bits in octal, such as 0660, got %q", s)
	}
	*f = modeFlag(v)
	return nil
}
