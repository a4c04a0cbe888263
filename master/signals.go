package master

import (
	"syscall"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// Signal is one row of the table that drives what the master does on a
// signal, in which order, what `-s NAME` sends, and which signal stands in
// for a command to a child whose channel is full.
type Signal struct {
	Sig  syscall.Signal
	Name string // the -s name, "" when there is none
	Does string // one line for logs and documentation

	act          func(*Master)
	evenStopping bool // acted on by a master that is stopping, too
	// cmd is the command that asks a child for what this signal asks of
	// it (children take these signals as the master does); the first row
	// with a command is the signal tell sends when the channel cannot
	// carry the command.
	cmd ipc.Cmd
}

// Signals lists every signal the master acts on, in the order the loop
// handles them when several are pending (handleSignals).
var Signals = []Signal{
	{Sig: unix.SIGCHLD, Does: "reap exited children; replace those that died unexpectedly",
		act: (*Master).reap, evenStopping: true},
	{Sig: unix.SIGINT, Does: "fast stop",
		act: func(m *Master) { m.stop(fast) }, evenStopping: true, cmd: ipc.CmdStop},
	{Sig: unix.SIGTERM, Name: "stop", Does: "graceful stop",
		act: (*Master).stopAfterDelay, evenStopping: true, cmd: ipc.CmdDrain},
	{Sig: unix.SIGQUIT, Name: "quit", Does: "graceful stop",
		act: (*Master).stopAfterDelay, evenStopping: true, cmd: ipc.CmdDrain},
	{Sig: unix.SIGHUP, Name: "reload", Does: "re-read the config, replace the children gracefully",
		act: (*Master).reload},
	{Sig: unix.SIGUSR1, Name: "reopen", Does: "reopen log files",
		act: (*Master).reopen, cmd: ipc.CmdReopen},
	{Sig: unix.SIGUSR2, Name: "upgrade", Does: "start a new master from the binary on disk",
		act: (*Master).upgrade},
	{Sig: unix.SIGTTIN, Does: "one child more",
		act: func(m *Master) { m.resize(len(m.slots) + 1) }},
	{Sig: unix.SIGTTOU, Does: "one child fewer",
		act: func(m *Master) { m.resize(len(m.slots) - 1) }},
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

// fallback is, by command, the signal that asks a child the same: the
// first row of Signals with that command. It is filled from the table
// (tell reads it, and the table's actions lead to tell).
var fallback = map[ipc.Cmd]syscall.Signal{}

func init() {
	for _, s := range Signals {
		if _, ok := fallback[s.cmd]; s.cmd != 0 && !ok {
			fallback[s.cmd] = s.Sig
		}
	}
}
