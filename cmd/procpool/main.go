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
	"os"

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
		return runChild(s, slot, stderr)
	}
	return runMaster(s, stderr)
}

func runMaster(s *settings, stderr io.Writer) int {
	err := master.Run(s.masterConfig())
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func (s *settings) masterConfig() master.Config {
	return master.Config{
		Listen:   s.listen,
		Workers:  s.workers,
		Mode:     s.mode,
		Affinity: s.affinity,
		Backlog:  s.backlog,
		Grace:    s.grace,
		Args:     s.childArgs(),
		Reload: func() (master.Config, error) {
			n, err := parseSettings(s.args, io.Discard)
			if err != nil {
				return master.Config{}, err
			}
			return n.masterConfig(), nil
		},
	}
}

func runChild(s *settings, slot int, stderr io.Writer) int {
	cfg := child.Config{
		Channel:  master.ChannelFd,
		Slot:     slot,
		Listener: -1,
		Pool:     s.pool,
		Limits:   s.limits,
		Timeouts: s.timeouts,
	}
	if s.mode == master.ModeReuseport {
		addr := os.Getenv(master.EnvListen)
		if addr == "" {
			addr = s.listen
		}
		fd, err := master.Listen(addr, s.backlog, true)
		if err != nil {
			fmt.Fprintf(stderr, "procpool child %d: %v\n", slot, err)
			return exitFatal
		}
		cfg.Listener = fd
	}
	if err := child.Run(cfg, child.HandlerFunc(routes)); err != nil && err != child.ErrMasterGone {
		fmt.Fprintf(stderr, "procpool child %d: %v\n", slot, err)
		return exitFailure
	}
	return exitOK
}
