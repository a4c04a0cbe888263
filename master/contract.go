package master

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// This file is everything a master agrees on with the processes it starts,
// both ends side by side: the fds they inherit, by number, the environment
// that names them, and the byte that says ready.
//
// A child (the same binary, re-executed from /proc/self/exe):
//
//	argv    "procpool: child SLOT gen GEN", then Config.Args
//	fd 0    /dev/null
//	fd 1, 2 the master's stderr
//	fd 3    ChannelFd: its end of the channel, a SOCK_SEQPACKET socketpair
//	        that carries ipc.Msg (package ipc lists the commands)
//	fd 4    StatsFd: its stats cell, a memfd of its own (ipc.OpenCell)
//	env     EnvSlot, EnvGen, EnvCell, EnvListen, and the master's own environment
//	        less every PROCPOOL_ name
//
// The child reads this back with OpenChild, which also marks its stats cell
// as opened, then announces itself with ipc.CmdReady. The master counts on
// the cell to see a child's progress and open connections: a ready child
// that never opened it is retired and its slot is not respawned.
//
// A new master started by an upgrade (SIGUSR2): fd 3 the listening socket
// (EnvInheritFd), fd 4 its end of a SOCK_SEQPACKET channel to the old master
// (EnvUpgradeFd), on which it writes readyByte once its children serve and
// then receives the old generation's connections (handover.go); EOF without
// the byte is a failed upgrade. With -admin, fd 5 is the admin listener
// (EnvAdminFd), which the new master serves on when its -admin is the same. A master detached by Daemonize: fd 3 (EnvDaemonFd), a pipe on
// which it writes readyByte when serving, or why it cannot.

// The fds a child finds open.
const (
	ChannelFd = 3 // its end of the channel to the master
	StatsFd   = 4 // its stats cell
)

// The fds of a new master, by who started it.
const (
	upgradeListenFd = 3 // upgrade: the listening socket (or port reservation)
	upgradeReadyFd  = 4 // upgrade: readyByte goes here, connections come back
	upgradeAdminFd  = 5 // upgrade: the admin listener, when there is one
	daemonReportFd  = 3 // daemon: readyByte or the error text goes here
)

// Environment of a child.
const (
	EnvSlot = "PROCPOOL_SLOT" // its slot in the pool
	EnvGen  = "PROCPOOL_GEN"  // its generation: reloads so far
	EnvCell = "PROCPOOL_CELL" // the master's number for its stats cell
	// EnvListen is the address the master resolved (port 0 made concrete);
	// reuseport children bind exactly this.
	EnvListen = "PROCPOOL_LISTEN"
)

// Environment of a new master.
const (
	// EnvInheritFd names the fd of the listening socket (fdpass) or of the
	// port reservation (reuseport) that a master started by an upgrade
	// takes over.
	EnvInheritFd = "PROCPOOL_INHERIT_FD"
	// EnvUpgradeFd names the fd on which a master started by an upgrade
	// writes readyByte when its children are ready: the old master's cue
	// to hand over and drain.
	EnvUpgradeFd = "PROCPOOL_UPGRADE_FD"
	// EnvAdminFd names the admin listener a master started by an upgrade
	// takes over: two masters cannot both bind it.
	EnvAdminFd = "PROCPOOL_ADMIN_FD"
	// EnvDaemonFd names, in a detached master, the fd on which it reports
	// to the process that started it.
	EnvDaemonFd = "PROCPOOL_DAEMON_FD"
)

// readyByte is what a new master, upgraded or detached, writes when it
// serves.
const readyByte = 'R'

// childStart is what a child of slot and gen is started with: its files,
// indexed by fd number, and its environment. null is /dev/null, channel the
// child's end of its channel, stats its stats cell's memfd.
func childStart(slot, gen, cell int, addr string, null, channel, stats int) (files []uintptr, env []string) {
	files = make([]uintptr, StatsFd+1)
	files[0] = uintptr(null)
	files[1], files[2] = os.Stderr.Fd(), os.Stderr.Fd()
	files[ChannelFd] = uintptr(channel)
	files[StatsFd] = uintptr(stats)
	env = append(environWithout("PROCPOOL_"),
		EnvSlot+"="+strconv.Itoa(slot), EnvGen+"="+strconv.Itoa(gen), EnvCell+"="+strconv.Itoa(cell),
		EnvListen+"="+addr)
	return files, env
}

// ChildSlot reports whether this process was started as a child, and which.
// It only looks; OpenChild takes what the child was given.
func ChildSlot() (slot int, ok bool) {
	v, ok := os.LookupEnv(EnvSlot)
	if !ok {
		return 0, false
	}
	slot, err := strconv.Atoi(v)
	return slot, err == nil
}

// Child is what a child was started with, as OpenChild reads it back.
type Child struct {
	Slot, Gen int
	Channel   int // fd of its end of the channel: child.Config.Channel
	// Stats is its cell of counters in the master's region:
	// child.Config.Stats. The master sees the child's progress and open
	// connections only there.
	Stats  *ipc.Cell
	Listen string // the address the master serves, port resolved
}

// OpenChild reads back what the master started this child with: it maps
// the child's stats cell and marks it opened (the master
// checks the mark once the child says ready). It fails when this process
// is not a child or was started without a part of it. Call it once.
func OpenChild() (Child, error) {
	c := Child{Channel: ChannelFd}
	var cell int
	var err error
	c.Slot, c.Gen, cell, c.Listen, err = readChild(os.Getenv)
	if err != nil {
		return c, err
	}
	_ = cell // the master's name for it; the child sees only its own
	if c.Stats, err = ipc.OpenCell(StatsFd); err != nil {
		return c, fmt.Errorf("stats cell (fd %d): %w", StatsFd, err)
	}
	c.Stats.Pid.Store(int64(os.Getpid()))
	return c, nil
}

// readChild parses a child's environment, as childStart wrote it.
func readChild(getenv func(string) string) (slot, gen, cell int, addr string, err error) {
	slot, err = strconv.Atoi(getenv(EnvSlot))
	if err != nil {
		return 0, 0, 0, "", fmt.Errorf("not started by a procpool master: %s=%q", EnvSlot, getenv(EnvSlot))
	}
	gen, err = strconv.Atoi(getenv(EnvGen))
	if err != nil {
		return slot, 0, 0, "", fmt.Errorf("started without a generation: %s=%q", EnvGen, getenv(EnvGen))
	}
	cell, err = strconv.Atoi(getenv(EnvCell))
	if err != nil || cell < 0 || cell >= ipc.Cells {
		return slot, gen, 0, "", fmt.Errorf("started without a stats cell: %s=%q", EnvCell, getenv(EnvCell))
	}
	addr = getenv(EnvListen)
	if addr == "" {
		return slot, gen, 0, "", errors.New("started without the address to serve: " + EnvListen + " is empty")
	}
	return slot, gen, cell, addr, nil
}

// openedCell reports whether k opened its stats cell (OpenChild marks it
// with the child's pid before the child says ready).
func (m *Master) openedCell(k *kid) bool {
	return k.cell < 0 || m.stats.Cell(k.cell).Pid.Load() == int64(k.pid)
}

// checkCells retires every ready child that did not open its stats cell.
// The master would never see it take a connection or make progress: the
// stall rule would call it stalled for good and -max-conns would count its
// connections open forever. Its slot is not respawned, since every child
// of this binary would do the same.
func (m *Master) checkCells() {
	for _, k := range m.kids {
		if k.state != ready || m.openedCell(k) {
			continue
		}
		m.log.Error("child runs without its stats cell: start children with master.OpenChild and give its Stats "+
			"to child.Config; not respawning its slot", "pid", k.pid, "slot", k.slot, "gen", k.gen)
		if k.gen == m.gen && k.slot < len(m.slots) {
			m.slots[k.slot].fatal = true
		}
		m.retire(k)
	}
}

// upgradeStart is what a new master is started with by an upgrade: lfd is
// the listening socket it takes over, ready its end of the channel it
// reports on and takes connections from, admin the admin listener (-1: none).
func upgradeStart(null, lfd, ready, admin int) (files []uintptr, env []string) {
	files = make([]uintptr, upgradeReadyFd+1)
	files[0], files[1], files[2] = uintptr(null), os.Stdout.Fd(), os.Stderr.Fd()
	files[upgradeListenFd] = uintptr(lfd)
	files[upgradeReadyFd] = uintptr(ready)
	env = append(environWithout("PROCPOOL_", "LISTEN_"),
		EnvInheritFd+"="+strconv.Itoa(upgradeListenFd), EnvUpgradeFd+"="+strconv.Itoa(upgradeReadyFd))
	if admin >= 0 {
		files = append(files, uintptr(admin))
		env = append(env, EnvAdminFd+"="+strconv.Itoa(upgradeAdminFd))
	}
	return files, env
}

// Upgraded reports whether this master was started by an upgrade. It then
// serves InheritedListener and reports ready to the old master on UpgradeChannel.
func Upgraded() bool { return os.Getenv(EnvInheritFd) != "" }

// InheritedListener takes the listening socket the old master passed at an
// upgrade; 0 when there is none (Config.ListenFd's none).
func InheritedListener() int { return max(0, inheritedFd(EnvInheritFd)) }

// UpgradeChannel takes, in a master started by an upgrade, its end of the
// channel to the old master, for Config.UpgradeFd; 0 otherwise. Call it once.
func UpgradeChannel() int {
	fd := inheritedFd(EnvUpgradeFd)
	if fd < 0 {
		return 0
	}
	unix.CloseOnExec(fd)
	unix.SetNonblock(fd, true)
	return fd
}

// daemonStart is what Daemonize starts the detached master with: stdin on
// null, stdout and stderr on log, and report, the pipe it reports on.
func daemonStart(null, log, report uintptr) (files []uintptr, env []string) {
	files = make([]uintptr, daemonReportFd+1)
	files[0], files[1], files[2] = null, log, log
	files[daemonReportFd] = report
	return files, append(os.Environ(), EnvDaemonFd+"="+strconv.Itoa(daemonReportFd))
}

// sealInherited marks every fd above stderr close-on-exec. A launcher may
// leave fds open without it (a shell's redirections, a supervisor's
// sockets); children and a new master get exactly the fds this file names,
// never those — and with -user they would reach an unprivileged process.
// The fds the contract names were taken (and marked) before Run, or are
// adopted by it; the master can still use everything it holds.
func sealInherited() {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	// Kernels before 5.11: one fcntl per open fd.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// inheritedFd takes the fd that the environment variable name gives, and
// clears the variable so that no process started later believes it. It
// returns -1 when there is none.
func inheritedFd(name string) int {
	fd, err := strconv.Atoi(os.Getenv(name))
	os.Unsetenv(name)
	if err != nil || fd < 3 {
		return -1
	}
	return fd
}

// environWithout is this process's environment less the variables whose
// names begin with one of prefixes.
func environWithout(prefixes ...string) []string {
	var env []string
next:
	for _, e := range os.Environ() {
		for _, p := range prefixes {
			if strings.HasPrefix(e, p) {
				continue next
			}
		}
		env = append(env, e)
	}
	return env
}
