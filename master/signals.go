package master

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Signal is one row of the table that drives what the master does on a
// signal, how it logs it, and what `-s NAME` sends.
type Signal struct {
	Sig  syscall.Signal
	Name string // the -s name, "" when there is none
	Does string // one line for logs and documentation
}

// Signals lists every signal the master acts on, in the order the loop
// handles them when several are pending.
var Signals = []Signal{
	{unix.SIGCHLD, "", "reap exited children; replace those that died unexpectedly"},
	{unix.SIGINT, "", "fast stop"},
	{unix.SIGTERM, "stop", "graceful stop"},
	{unix.SIGQUIT, "quit", "graceful stop"},
	{unix.SIGHUP, "reload", "re-read the config, replace the children gracefully"},
	{unix.SIGUSR1, "reopen", "reopen log files"},
	{unix.SIGUSR2, "upgrade", "start a new master from the binary on disk"},
	{unix.SIGTTIN, "", "one child more"},
	{unix.SIGTTOU, "", "one child fewer"},
}

// SignalByName finds the signal that `-s name` sends.
func SignalByName(name string) (syscall.Signal, bool) {
	for _, s := range Signals {
		if s.Name != "" && s.Name == name {
			return s.Sig, true
		}
	}
	return 0, false
}
