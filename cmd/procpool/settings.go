package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/master"
)

// settings are the effective values of every flag, after the config file.
type settings struct {
	listen   string
	workers  int
	mode     string
	affinity bool
	batch    bool
	config   string
	backlog  int
	grace    time.Duration
	pool     int
	maxConns int
	limits   child.Limits
	timeouts child.Timeouts
	signal   string
	daemon   bool
	pidfile  string
	logPath  string
	user     string
	admin    string
	public   bool // -admin-public
	logJSON  bool
	access   string
	dispatch string
	// Recycling: -max-requests, -max-lifetime, -max-rss, -recycle-jitter.
	maxRequests   uint64
	maxLifetime   time.Duration
	maxRSS        sizeFlag
	recycleJitter shareFlag
	stall         time.Duration
	watchdog      time.Duration
	deferAccept   time.Duration
	lb            lbSettings // behind a load balancer (lbflags.go)

	// args holds the command line as given, so that a reload can apply it
	// again over a re-read config file: the command line always wins.
	args []string
	fs   *flag.FlagSet // bound to the fields above

	pidfileSet bool // -pidfile given on the command line or in the file
}

// childFlags are the settings a child needs; they are passed on explicitly.
var childFlags = []string{"listen", "workers", "mode", "affinity", "pool", "log", "max-conns", "access-log",
	"max-request-line", "max-header-bytes", "max-headers", "max-body",
	"header-timeout", "body-timeout", "idle-timeout", "write-timeout", "linger-timeout"}

// usageError is a bad flag, config line or value: exit status 2. flag names
// the setting a bad value belongs to, if one does.
type usageError struct{ msg, flag string }

func (e *usageError) Error() string { return e.msg }

func newFlagSet(s *settings) *flag.FlagSet {
	fs := flag.NewFlagSet("procpool", flag.ContinueOnError)
	fs.StringVar(&s.listen, "listen", "127.0.0.1:8080", "`address` to serve")
	fs.IntVar(&s.workers, "workers", master.DefaultWorkers(), "number of child processes: by default one per CPU the process may use (its CPU quota and affinity mask)")
	fs.StringVar(&s.mode, "mode", master.ModeFdpass, "how connections reach children: fdpass or reuseport")
	fs.BoolVar(&s.affinity, "affinity", true, "pin child i to CPU i mod the number of CPUs")
	fs.BoolVar(&s.batch, "sched-batch", false, "run children under SCHED_BATCH: a woken child does not preempt the task on its CPU (more throughput, longer tail latency where CPUs are shared)")
	fs.StringVar(&s.config, "config", "", "config `file` of key = value lines (the flag names); re-read on SIGHUP")
	fs.IntVar(&s.backlog, "backlog", 0, "listen backlog (0: the kernel's maximum, net.core.somaxconn)")
	fs.DurationVar(&s.grace, "grace", master.DefaultGrace, "how long a graceful stop waits for open requests")
	fs.IntVar(&s.maxConns, "max-conns", 65536, "most connections one child holds; when every child is full the master stops accepting (0: no limit)")
	fs.IntVar(&s.pool, "pool", 0, "worker goroutines per child for blocking handlers (0: handlers run inline in the event loop)")
	fs.IntVar(&s.limits.MaxRequestLine, "max-request-line", child.DefaultLimits.MaxRequestLine, "longest request line in bytes (414 beyond)")
	fs.IntVar(&s.limits.MaxHeaderBytes, "max-header-bytes", child.DefaultLimits.MaxHeaderBytes, "largest header block in bytes (431 beyond)")
	fs.IntVar(&s.limits.MaxHeaders, "max-headers", child.DefaultLimits.MaxHeaders, "most header fields in a request (431 beyond)")
	fs.Int64Var(&s.limits.MaxBody, "max-body", child.DefaultLimits.MaxBody, "largest request body in bytes (413 beyond)")
	fs.DurationVar(&s.timeouts.Header, "header-timeout", child.DefaultTimeouts.Header, "time to receive a request's headers")
	fs.DurationVar(&s.timeouts.Body, "body-timeout", child.DefaultTimeouts.Body, "time between two reads of a request body")
	fs.DurationVar(&s.timeouts.Idle, "idle-timeout", child.DefaultTimeouts.Idle, "how long an idle keep-alive connection stays open")
	fs.DurationVar(&s.timeouts.Write, "write-timeout", child.DefaultTimeouts.Write, "time between two writes that make progress")
	fs.DurationVar(&s.timeouts.Linger, "linger-timeout", child.DefaultTimeouts.Linger, "how long a rejected client is drained before the close")
	fs.BoolVar(&s.daemon, "daemon", false, "detach from the terminal and write the pidfile")
	fs.StringVar(&s.pidfile, "pidfile", "procpool.pid", "`file` holding the master's pid, locked while it runs (written with -daemon or when given)")
	fs.StringVar(&s.logPath, "log", "", "lifecycle and error log `file` (default stderr); reopened on SIGUSR1")
	fs.StringVar(&s.user, "user", "", "run children as this `user` (the master must start as root; fdpass mode)")
	fs.StringVar(&s.admin, "admin", "", "`address` of the status listener: GET /status (JSON), GET /metrics (Prometheus); host:port on loopback or unix:/path")
	fs.BoolVar(&s.public, "admin-public", false, "let -admin listen on an address beyond loopback (it has no authentication: firewall it)")
	fs.StringVar(&s.access, "access-log", "", "append one combined-format line per request to `file`, buffered in each child; reopened on SIGUSR1")
	fs.BoolVar(&s.logJSON, "log-json", false, "write the lifecycle log as JSON lines instead of text")
	fs.StringVar(&s.dispatch, "dispatch", master.DispatchRR, "order in which the master deals connections: rr (round-robin) or least (fewest outstanding)")
	fs.DurationVar(&s.stall, "stall", master.DefaultStall, "a child with connections waiting and no progress for this long is dealt nothing and its queue is taken back (0: off)")
	fs.DurationVar(&s.watchdog, "watchdog", 0, "kill and replace a child stalled for longer than this, logging the request it is stuck in (0: never)")
	fs.DurationVar(&s.deferAccept, "defer-accept", 0, "fdpass: accept a connection only once its first bytes arrived (TCP_DEFER_ACCEPT, whole seconds): half the CPU per short connection, but a client that waits for the server to speak first is accepted a second late (0: off)")
	fs.Uint64Var(&s.maxRequests, "max-requests", 0, "recycle a child after this many requests: a replacement starts first, then the child hands its connections back (0: never)")
	fs.DurationVar(&s.maxLifetime, "max-lifetime", 0, "recycle a child after it has run this long (0: never)")
	s.recycleJitter = master.DefaultRecycleJitter
	fs.Var(&s.maxRSS, "max-rss", "recycle a child whose resident memory reaches this `size` (512M, 1G; 0: never)")
	fs.Var(&s.recycleJitter, "recycle-jitter", "lower each child's recycling limits by up to this `share` (10%), so children do not recycle together")
	s.lb.register(fs)
	fs.StringVar(&s.signal, "s", "", "act on the running master found through -pidfile: stop, quit (wait until it has exited, up to -grace plus 5s), reload (wait for its verdict), reopen, upgrade; status (the table, read from -admin)")
	return fs
}

// parseSettings applies the command line, then the config file for every key
// the command line did not set, then validates the result. -h prints the
// usage to stderr; any other mistake is one line, returned.
func parseSettings(args []string, stderr io.Writer) (*settings, error) {
	s := &settings{args: args}
	fs := newFlagSet(s)
	s.fs = fs
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // the flag package calls it on errors too
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "Usage of procpool:\n")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, &usageError{msg: flagError(fs, err) + hint}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{msg: strayArgument(fs, args) + hint}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	lines := map[string]int{} // the config line that set each key
	if s.signal != "" {
		return s, s.controlSettings(set, lines)
	}
	if s.config != "" {
		if err := applyConfig(fs, s.config, set, lines, nil); err != nil {
			return nil, err
		}
	}
	// Visit sees flags set by the config file too.
	fs.Visit(func(f *flag.Flag) { s.pidfileSet = s.pidfileSet || f.Name == "pidfile" })
	if err := s.validate(); err != nil {
		// A bad value from the file is reported at its line.
		if ue, ok := err.(*usageError); ok && lines[ue.flag] > 0 {
			return nil, &usageError{msg: fmt.Sprintf("config %s line %d: %s", s.config, lines[ue.flag], ue.msg)}
		}
		return nil, err
	}
	return s, nil
}

// hint ends a message about the command line's syntax.
const hint = " (procpool -h lists the flags)"

// controlSettings completes the settings of `procpool -s`: it needs only
// what finds the master (-pidfile), how long to wait for it (-grace) and,
// for status, -admin. From -config it reads those keys alone, so that a
// config file broken elsewhere still lets -s stop a master.
func (s *settings) controlSettings(set map[string]bool, lines map[string]int) error {
	if s.config != "" {
		only := map[string]bool{"pidfile": true, "grace": true, "admin": true, "shutdown-delay": true}
		if err := applyConfig(s.fs, s.config, set, lines, only); err != nil {
			return err
		}
	}
	bad := func(flag, format string, a ...any) error {
		err := &usageError{msg: fmt.Sprintf(format, a...), flag: flag}
		if lines[flag] > 0 {
			err.msg = fmt.Sprintf("config %s line %d: %s", s.config, lines[flag], err.msg)
		}
		return err
	}
	switch _, ok := master.SignalByName(s.signal); {
	case s.signal == "status" && s.admin == "":
		return bad("s", "-s status reads the table from the admin listener: give -admin (or admin = in -config)")
	case s.signal != "status" && !ok:
		return bad("s", "-s: want stop, quit, reload, reopen, upgrade or status, got %q", s.signal)
	case s.grace < 0:
		return bad("grace", "-grace: must not be negative, got %v", s.grace)
	}
	return nil
}

// flagError rewords an error of the flag package as one line that names
// the flag and what it wants.
func flagError(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if m := reBadValue.FindStringSubmatch(msg); m != nil {
		value, _ := strconv.Unquote(m[1])
		return "-" + valueError(fs, m[2], value, errors.New(m[3]))
	}
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag -" + name
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "-" + name + " needs a value"
	}
	return msg
}

// reBadValue matches the flag package's "invalid value" errors, for bools
// ("invalid boolean value ... for -x") and the rest ("... for flag -x").
var reBadValue = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-([^:]+): (.*)$`)

// valueError says what the flag called name wants, given the value that
// did not parse: "workers: want a whole number, got "abc"".
func valueError(fs *flag.FlagSet, name, value string, err error) string {
	var want string
	f := fs.Lookup(name)
	var v any
	if g, ok := f.Value.(flag.Getter); ok {
		v = g.Get()
	}
	switch v.(type) {
	case bool:
		want = "want true or false"
	case time.Duration:
		want = "want a duration with a unit, such as 10s, 500ms or 1m30s"
	case int, int64, uint, uint64:
		want = "want a whole number"
		if strings.Contains(err.Error(), "out of range") {
			return fmt.Sprintf("%s: %q is out of range", name, value)
		}
	default:
		want = err.Error()
	}
	return fmt.Sprintf("%s: %s, got %q", name, want, value)
}

// strayArgument explains the first argument that is not a flag. The usual
// cause is a boolean flag given a separate value: -affinity false.
func strayArgument(fs *flag.FlagSet, args []string) string {
	stray := fs.Arg(0)
	i := len(args) - fs.NArg()
	if i > 0 {
		prev := strings.TrimLeft(args[i-1], "-")
		if f := fs.Lookup(prev); f != nil && !strings.Contains(prev, "=") {
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
				if _, err := strconv.ParseBool(stray); err == nil {
					return fmt.Sprintf("-%s is a boolean flag: write -%s=%s, not -%s %s", prev, prev, stray, prev, stray)
				}
			}
		}
	}
	return fmt.Sprintf("unexpected argument %q: flags come before any other argument, and procpool takes none", stray)
}

// applyConfig reads key = value lines; # starts a comment. It records in
// lines the line number of each key it applies. With only set, it applies
// only those keys and passes over every other line, good or bad.
func applyConfig(fs *flag.FlagSet, path string, skip map[string]bool, lines map[string]int, only map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return &usageError{msg: fmt.Sprintf("config: %v", err)}
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		bad := func(why string) error {
			return &usageError{msg: fmt.Sprintf("config %s line %d: %s", path, n, why)}
		}
		if only != nil && (!ok || !only[key]) {
			continue
		}
		switch {
		case !ok || key == "":
			return bad(fmt.Sprintf("want key = value, got %q", line))
		case key == "config" || key == "s" || fs.Lookup(key) == nil:
			return bad(fmt.Sprintf("unknown key %q", key))
		case skip[key]:
			continue
		}
		if err := fs.Set(key, value); err != nil {
			return bad(valueError(fs, key, value, err))
		}
		lines[key] = n

	}
	if err := sc.Err(); err != nil {
		return &usageError{msg: fmt.Sprintf("config %s: %v", path, err)}
	}
	return nil
}

func (s *settings) validate() error {
	// flag is the setting to blame, so a bad value from the config file is
	// reported at its line.
	bad := func(flag, format string, a ...any) error {
		return &usageError{msg: fmt.Sprintf(format, a...), flag: flag}
	}
	switch {
	case s.mode != master.ModeFdpass && s.mode != master.ModeReuseport:
		return bad("mode", "-mode: want fdpass or reuseport, got %q", s.mode)
	case s.workers < 1 || s.workers > 1024:
		return bad("workers", "-workers: want 1 to 1024, got %d", s.workers)
	case s.maxConns < 0:
		return bad("max-conns", "-max-conns: must not be negative")
	case s.pool < 0 || s.pool > 10000:
		return bad("pool", "-pool: want 0 to 10000, got %d", s.pool)
	case s.backlog < 0:
		return bad("backlog", "-backlog: must not be negative")
	case s.grace < 0:
		return bad("grace", "-grace: must not be negative")
	case s.dispatch != master.DispatchRR && s.dispatch != master.DispatchLeast:
		return bad("dispatch", "-dispatch: want rr or least, got %q", s.dispatch)
	case s.stall < 0:
		return bad("stall", "-stall: must not be negative, got %v", s.stall)
	case s.watchdog < 0:
		return bad("watchdog", "-watchdog: must not be negative, got %v", s.watchdog)
	case s.deferAccept < 0:
		return bad("defer-accept", "-defer-accept: must not be negative, got %v", s.deferAccept)
	case s.maxLifetime < 0:
		return bad("max-lifetime", "-max-lifetime: must not be negative, got %v", s.maxLifetime)
	case s.watchdog > 0 && s.stall > 0 && s.watchdog <= s.stall:
		return bad("watchdog", "-watchdog %v must be longer than -stall %v: a child is judged by the watchdog only once it is stalled", s.watchdog, s.stall)
	// A child holds a request in memory: limits above child.MaxLimits are
	// refused here rather than clamped there.
	case s.limits.MaxRequestLine < 64 || s.limits.MaxRequestLine > child.MaxLimits.MaxRequestLine:
		return bad("max-request-line", "-max-request-line: want 64 to %d bytes, got %d", child.MaxLimits.MaxRequestLine, s.limits.MaxRequestLine)
	case s.limits.MaxHeaderBytes < 64 || s.limits.MaxHeaderBytes > child.MaxLimits.MaxHeaderBytes:
		return bad("max-header-bytes", "-max-header-bytes: want 64 to %d bytes, got %d", child.MaxLimits.MaxHeaderBytes, s.limits.MaxHeaderBytes)
	case s.limits.MaxHeaders < 1 || s.limits.MaxHeaders > child.MaxLimits.MaxHeaders:
		return bad("max-headers", "-max-headers: want 1 to %d fields, got %d", child.MaxLimits.MaxHeaders, s.limits.MaxHeaders)
	case s.limits.MaxBody < 0 || s.limits.MaxBody > child.MaxLimits.MaxBody:
		return bad("max-body", "-max-body: want 0 to %d bytes, got %d", child.MaxLimits.MaxBody, s.limits.MaxBody)
	case s.timeouts.Header <= 0:
		return bad("header-timeout", "-header-timeout: must be positive, got %v", s.timeouts.Header)
	case s.timeouts.Body <= 0:
		return bad("body-timeout", "-body-timeout: must be positive, got %v", s.timeouts.Body)
	case s.timeouts.Idle <= 0:
		return bad("idle-timeout", "-idle-timeout: must be positive, got %v", s.timeouts.Idle)
	case s.timeouts.Write <= 0:
		return bad("write-timeout", "-write-timeout: must be positive, got %v", s.timeouts.Write)
	case s.timeouts.Linger <= 0:
		return bad("linger-timeout", "-linger-timeout: must be positive, got %v", s.timeouts.Linger)
	}
	if err := s.lb.validate(s.listen, s.mode); err != nil {
		return err
	}
	if err := master.CheckListen(s.listen); err != nil {
		return bad("listen", "-listen: %v", err)
	}
	if s.user != "" && s.mode == master.ModeReuseport {
		return bad("user", "-user works in fdpass mode only: the kernel lets only the same user join a SO_REUSEPORT group")
	}
	if s.admin != "" {
		if err := checkAdmin(s.admin, s.public); err != nil {
			return bad("admin", "%v", err)
		}
	}
	return nil
}

// checkAdmin checks -admin: unix:PATH, or host:port where the host is a
// loopback address unless public allows any.
func checkAdmin(addr string, public bool) error {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return fmt.Errorf("-admin: want host:port or unix:PATH, got %q", addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return fmt.Errorf("-admin: want host:port or unix:PATH, got %q", addr)
	}
	if public {
		return nil
	}
	const why = "the admin listener has no authentication: give a loopback address or unix:PATH, or add -admin-public"
	ip, err := netip.ParseAddr(host)
	switch {
	case host == "localhost":
		return nil
	case host == "":
		return fmt.Errorf("-admin %s listens on every address, and %s", addr, why)
	case err != nil:
		return fmt.Errorf("-admin %s: %q is not a loopback address, and %s", addr, host, why)
	case ip.IsUnspecified():
		return fmt.Errorf("-admin %s listens on every address, and %s", addr, why)
	case !ip.Unmap().IsLoopback():
		return fmt.Errorf("-admin %s is not a loopback address, and %s", addr, why)
	}
	return nil
}

// childArgs are the flags a child is started with: every effective value a
// child uses, so the child never reads the config file itself.
func (s *settings) childArgs() []string {
	args := make([]string, 0, len(childFlags))
	for _, name := range childFlags {
		args = append(args, "-"+name+"="+s.fs.Lookup(name).Value.String())
	}
	return args
}
