package master

import (
	"strings"
	"syscall"
	"testing"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// fakeSys stands in for the kernel (system) in the tests of the master's
// decisions. Starting a process keeps a copy of the fds it was given, by
// their number in the process; a child's channel becomes a real channel
// whose far end the test holds. Processes exit when the test says, or on
// SIGKILL, and wait returns their exits in order.
type fakeSys struct {
	t      *testing.T
	m      *Master
	pid    int // the last pid given out
	procs  map[int]*fakeProc
	exits  []fakeExit
	kills  []fakeKill
	starts int
	fail   error // the next start fails with this
}

type fakeProc struct {
	pid       int
	path      string
	argv, env []string
	cpu       int
	fds       map[int]int  // copies of the fds it was started with, by number (3 and up)
	far       *ipc.Channel // a child's end of its channel (ChannelFd); nil for a master
}

type fakeExit struct {
	pid int
	ws  syscall.WaitStatus
}

type fakeKill struct {
	pid int
	sig syscall.Signal
}

// firstFakePid is beyond the kernel's largest pid (PID_MAX_LIMIT, 2^22), so
// that a signal sent to a fake process by the real kill finds no one.
const firstFakePid = 1 << 23

func newFakeSys(t *testing.T, m *Master) *fakeSys {
	f := &fakeSys{t: t, m: m, pid: firstFakePid, procs: map[int]*fakeProc{}}
	t.Cleanup(func() {
		for _, p := range f.procs {
			p.close()
		}
	})
	return f
}

func (f *fakeSys) system() system {
	return system{start: f.start, wait: f.wait, kill: f.kill}
}

func (f *fakeSys) start(cpu int, batch bool, path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	f.starts++
	if err := f.fail; err != nil {
		f.fail = nil
		return 0, err
	}
	f.pid++
	p := &fakeProc{pid: f.pid, path: path, argv: argv, env: attr.Env, cpu: cpu, fds: map[int]int{}}
	for n := 3; n < len(attr.Files); n++ {
		fd, err := unix.FcntlInt(attr.Files[n], unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			f.t.Fatalf("start %s: fd %d: %v", argv[0], n, err)
		}
		p.fds[n] = fd
	}
	if strings.HasPrefix(argv[0], "procpool: child") {
		// What OpenChild does: read the environment and mark the cell.
		_, _, cell, _, err := readChild(p.getenv)
		if err != nil {
			f.t.Fatalf("child started without its contract: %v", err)
		}
		f.m.stats.Cell(cell).Pid.Store(int64(p.pid))
		p.far = ipc.NewChannel(p.fds[ChannelFd])
		delete(p.fds, ChannelFd)
	}
	f.procs[p.pid] = p
	return p.pid, nil
}

func (p *fakeProc) getenv(name string) string {
	for _, e := range p.env {
		if v, ok := strings.CutPrefix(e, name+"="); ok {
			return v
		}
	}
	return ""
}

func (p *fakeProc) close() {
	if p.far != nil {
		p.far.Close()
	}
	for _, fd := range p.fds {
		unix.Close(fd)
	}
}

func (f *fakeSys) wait(ws *syscall.WaitStatus) (int, error) {
	if len(f.exits) == 0 {
		if len(f.procs) == 0 {
			return -1, syscall.ECHILD
		}
		return 0, nil
	}
	e := f.exits[0]
	f.exits = f.exits[1:]
	*ws = e.ws
	return e.pid, nil
}

func (f *fakeSys) kill(pid int, sig syscall.Signal) error {
	f.kills = append(f.kills, fakeKill{pid, sig})
	if _, ok := f.procs[pid]; !ok {
		return syscall.ESRCH
	}
	if sig == unix.SIGKILL {
		f.exit(pid, killedBy(unix.SIGKILL))
	}
	return nil
}

// exit ends process pid with ws: what it held is closed, and its exit waits
// to be reaped. A process that already exited is left alone.
func (f *fakeSys) exit(pid int, ws syscall.WaitStatus) {
	p, ok := f.procs[pid]
	if !ok {
		return
	}
	p.close()
	delete(f.procs, pid)
	f.exits = append(f.exits, fakeExit{pid, ws})
}

// exited is the wait status of a process that exited with status.
func exited(status int) syscall.WaitStatus { return syscall.WaitStatus(status << 8) }

// killedBy is the wait status of a process killed by sig.
func killedBy(sig syscall.Signal) syscall.WaitStatus { return syscall.WaitStatus(sig) }

// ready has child k say it is ready, and the master hear it.
func (f *fakeSys) ready(k *kid) {
	f.t.Helper()
	p := f.procs[k.pid]
	if err := p.far.Send(ipc.Msg{Cmd: ipc.CmdReady, Pid: int32(k.pid), Slot: int32(k.slot)}, nil); err != nil {
		f.t.Fatal(err)
	}
	f.m.onChannel(k, &epoll.Event{Events: epoll.In, Fd: int32(k.ch.Fd)})
}

// child is the test's view of the child process k: its far end.
func (f *fakeSys) child(k *kid) testKid { return testKid{k, f.procs[k.pid].far} }

// killed lists the signals sent to pid, in order.
func (f *fakeSys) killed(pid int) []syscall.Signal {
	var l []syscall.Signal
	for _, k := range f.kills {
		if k.pid == pid {
			l = append(l, k.sig)
		}
	}
	return l
}
