// Command procpool is a prefork HTTP server: a master process that accepts
// connections and hands them to CPU-pinned children running epoll loops.
//
// The same binary plays both roles: started by a user it is the master;
// started by a master (PROCPOOL_SLOT in its environment) it is a child.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/master"
)

// Exit statuses: 2 is fatal (bad usage or config; a master does not respawn
// a child that exits 2), 1 is a runtime failure such as an address in use.
const (
	exitOK      = 0
	exitFailure = 1
	exitFatal   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	s, err := parseSettings(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return exitFatal
	}
	if slot, ok := master.ChildSlot(); ok {
		setComm(fmt.Sprintf("procpool/%d", slot))
		return runChild(s, slot)
	}
	return runMaster(s, stderr)
}

func runMaster(s *settings, stderr io.Writer) int {
	if s.signal != "" {
		return control(s, os.Stdout, stderr)
	}
	upgraded := master.Upgraded()
	if s.daemon && !master.Detached() && !upgraded {
		return master.Daemonize(s.logPath, stderr)
	}
	setComm("procpool")
	report := master.DaemonReporter() // nil unless we are the detached master
	// Once -log moves stderr to a file, a reason to stop still reaches the
	// terminal the master was started from, if it has one; a detached
	// master's reaches it through report.
	term := terminal(stderr, s.logPath)
	defer term.Close()
	fail := func(status int, err error) int {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		if term != nil {
			fmt.Fprintf(term, "procpool: %v\n", err)
		}
		if report != nil {
			report(err)
		}
		return status
	}
	if err := openLog(s.logPath); err != nil {
		term.Close()
		term = nil // stderr is still where it was
		return fail(exitFailure, fmt.Errorf("-log: %w", err))
	}
	cfg, err := s.masterConfig()
	if err != nil {
		return fail(exitFatal, err)
	}
	// What would make every child fail at its start is checked before
	// forking any: the access log, opened as the children's user.
	if err := s.checkChildFiles(cfg.Credential); err != nil {
		return fail(exitFailure, err)
	}

	// The pidfile: taken at start, or, after an upgrade, once the old master
	// lets go of it (it does when we report ready).
	var pf *master.Pidfile
	if s.daemon || s.pidfileSet {
		if upgraded {
			pf = master.PendingPidfile(s.pidfile)
		} else if pf, err = master.CreatePidfile(s.pidfile); err != nil {
			return fail(exitFailure, err)
		}
		cfg.Pidfile = pf
		defer pf.Remove()
	}

	// Started by an upgrade: the master reports ready to the old one on this
	// channel, then takes over its connections through it.
	cfg.UpgradeFd = master.UpgradeChannel()
	cfg.Ready = func(addr string) {
		if report != nil {
			report(nil)
		}
		if cfg.UpgradeFd > 0 && pf != nil {
			go takePidfile(pf) // the old master hands it over once it has heard
		}
		if pf == nil {
			cfg.Log.Info("no -pidfile: procpool -s cannot find this master; signal it by pid, or start it with -pidfile FILE",
				"pid", os.Getpid())
		}
	}
	if err := master.Run(cfg); err != nil {
		if errors.Is(err, master.ErrChildrenFailed) {
			err = fmt.Errorf("%w, so the master stopped; %s", err, s.childErrorsAt())
		}
		return fail(exitFailure, err)
	}
	return exitOK
}

// childErrorsAt says where the children's errors went.
func (s *settings) childErrorsAt() string {
	switch {
	case s.logPath != "":
		return "their errors are in " + s.logPath
	case s.daemon:
		return "their errors went to /dev/null: give -log FILE to keep them"
	}
	return "their errors are above"
}

func (s *settings) masterConfig() (master.Config, error) {
	exe, _ := os.Executable()
	cfg := master.Config{
		Listen:     s.listen,
		Workers:    s.workers,
		Mode:       s.mode,
		Affinity:   s.affinity,
		SchedBatch: s.batch,
		Backlog:    s.backlog,
		Grace:      graceSetting(s.grace),
		MaxConns:   s.maxConns,
		Dispatch:   s.dispatch,
		Stall:      stallSetting(s.stall),
		Watchdog:   s.watchdog,
		// The listener.
		DeferAccept: s.deferAccept,
		// Recycling.
		MaxRequests:   s.maxRequests,
		MaxLifetime:   s.maxLifetime,
		MaxRSS:        int64(s.maxRSS),
		RecycleJitter: float64(s.recycleJitter),
		Admin:         s.admin,
		Log:           newLogger(s.logJSON),
		Args:          s.childArgs(),
		Exe:           exe,
		MasterArgs:    s.args,
		Reopen:        func() error { return reopenLog(s.logPath) },
		Reload: func() (master.Config, error) {
			n, err := parseSettings(s.args, io.Discard)
			if err != nil {
				return master.Config{}, err
			}
			if err := s.reloadError(n); err != nil {
				return master.Config{}, err
			}
			cfg, err := n.masterConfig()
			if err == nil {
				err = n.checkChildFiles(cfg.Credential)
			}
			return cfg, err
		},
	}
	cfg.AdminPublic = s.public
	s.lb.apply(&cfg)
	if fd := master.InheritedListener(); fd > 0 {
		cfg.ListenFd = fd
	} else if fd := master.ActivatedListener(); fd > 0 {
		if s.mode == master.ModeReuseport {
			return cfg, &usageError{msg: "socket activation works in fdpass mode only: in reuseport mode every child " +
				"binds its own SO_REUSEPORT socket, and the listening socket systemd passes cannot be shared with them"}
		}
		cfg.ListenFd = fd
	}
	if s.user != "" {
		cred, err := lookupUser(s.user)
		if err != nil {
			return cfg, err
		}
		cfg.Credential = cred
	}
	return cfg, nil
}

func runChild(s *settings, slot int) int {
	from, err := master.OpenChild()
	log := newLogger(s.logJSON).With("pid", os.Getpid(), "slot", slot, "gen", from.Gen)
	slog.SetDefault(log) // what a handler writes with package log goes the same way
	if err != nil {
		log.Error("start", "err", err)
		return exitFatal
	}
	cfg := child.Config{
		Channel:  from.Channel,
		Slot:     from.Slot,
		Stats:    from.Stats,
		Listener: -1,
		Pool:     s.pool,
		Limits:   s.limits,
		Timeouts: s.timeouts,
		MaxConns: s.maxConns,
		Log:      log,
	}
	cfg.Proxy = s.lb.proxyConfig()
	if s.access != "" {
		// child.OpenAccessLog follows links; the check opens without.
		if err := checkWritable(s.access, nil); err != nil {
			log.Error("open -access-log", "err", err)
			return exitFatal
		}
		alog, err := child.OpenAccessLog(s.access)
		if err != nil {
			log.Error("open -access-log", "err", err)
			return exitFatal
		}
		cfg.AccessLog = alog
	}
	cfg.Reopen = func() {
		if err := reopenLog(s.logPath); err != nil {
			log.Error("reopen -log", "err", err)
		}
		if cfg.AccessLog != nil {
			if err := checkWritable(s.access, nil); err != nil {
				log.Error("reopen -access-log", "err", err)
				return
			}
			cfg.AccessLog.Reopen()
		}
	}
	if s.mode == master.ModeReuseport {
		fd, err := master.Listen(from.Listen, s.backlog, true)
		if err != nil {
			log.Error("listen", "err", err)
			return exitFatal
		}
		cfg.Listener = fd
	}
	if err := child.Run(cfg, child.HandlerFunc(routes)); err != nil && err != child.ErrMasterGone {
		log.Error("child failed", "err", err)
		return exitFailure
	}
	return exitOK
}

// stallSetting maps -stall to master.Config.Stall, where 0 means the
// default and a negative value turns the rule off.
func stallSetting(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// graceSetting maps -grace to master.Config.Grace, where 0 means the default
// and a negative value none.
func graceSetting(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
