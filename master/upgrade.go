package master

import (
	"syscall"
	"time"

	"github.com/procpool/procpool/epoll"
	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// upgrade starts a new master from the binary on disk, passing it the
// listening socket. Until it reports ready, this master serves as before; if
// it dies first, this master logs why and goes on.
func (m *Master) upgrade() {
	switch {
	case m.upgradeFd >= 0:
		m.log.Warn("upgrade already in progress", "new_pid", m.upgradePid)
		return
	case m.lfd < 0 || m.cfg.Exe == "":
		m.log.Error("upgrade impossible: no listening socket or binary")
		return
	}
	// A channel, not a pipe: the new master reports ready on it, and then
	// receives the old generation's connections through it (handover.go).
	var p [2]int
	var err error
	if p[0], p[1], err = ipc.Pair(); err != nil {
		m.log.Error("upgrade failed", "err", err)
		return
	}
	afd, err := m.admin.fd()
	if err != nil {
		m.log.Warn("upgrade: the admin listener cannot be passed on; the new master opens its own, which fails while this one holds the address", "err", err)
	}
	files, env := upgradeStart(m.null, m.lfd, p[1], afd)
	attr := &syscall.ProcAttr{Env: env, Files: files}
	argv := append([]string{MasterTitle}, m.cfg.MasterArgs...)
	pid, err := m.sys.start(-1, false, m.cfg.Exe, argv, attr)
	unix.Close(p[1])
	if err != nil {
		unix.Close(p[0])
		m.log.Error("upgrade failed, still serving", "binary", m.cfg.Exe, "err", err)
		return
	}
	if err := m.poller.Add(p[0], epoll.In); err != nil {
		unix.Close(p[0])
		m.log.Error("upgrade: cannot watch the new master", "err", err)
		return
	}
	m.upgradePid, m.upgradeFd = pid, p[0]
	m.upgradeDeadline = m.now().Add(upgradeTimeout)
	m.log.Info("upgrade begun", "binary", m.cfg.Exe, "new_pid", pid)
}

// onUpgradeReady reads the new master's verdict: a byte when ready, EOF when
// it exited (or closed the pipe) without getting there.
func (m *Master) onUpgradeReady() {
	var b [1]byte
	n, err := unix.Read(m.upgradeFd, b[:])
	if err == unix.EINTR || err == unix.EAGAIN {
		return
	}
	fd := m.upgradeFd
	m.poller.Delete(fd)
	m.upgradeFd = -1
	if n != 1 || b[0] != readyByte {
		unix.Close(fd)
		m.log.Error("upgrade failed: the new master exited before it was ready; still serving",
			"new_pid", m.upgradePid)
		return
	}
	m.log.Info("upgrade done, handing over", "new_pid", m.upgradePid)
	m.handover = ipc.NewChannel(fd)
	notifyHandOver(m.upgradePid)
	if m.cfg.Pidfile != nil {
		if err := m.cfg.Pidfile.Write(m.upgradePid); err != nil {
			m.log.Error("upgrade: pidfile", "err", err)
		}
		m.cfg.Pidfile.handOver()
	}
	m.stop(graceful)
}

// upgradeExited notes the exit of a new master started by upgrade: before it
// was ready that is a failed upgrade, after it a normal exit.
func (m *Master) upgradeExited(ws syscall.WaitStatus) {
	m.log.Info("new master exited", append([]any{"pid", m.upgradePid}, exitDesc(ws)...)...)
	if m.upgradeFd >= 0 {
		m.onUpgradeReady() // reads EOF and logs the failure
	}
	m.upgradePid = 0
}

// MasterTitle is argv[0] of a master this package starts (detached by
// Daemonize, or new by an upgrade), as ps and pgrep -f show it.
const MasterTitle = "procpool: master"

// upgradeTimeout bounds how long a new master may take to get ready; past it
// the new master is killed and this one goes on.
const upgradeTimeout = 30 * time.Second

// checkUpgrade gives up on a new master that is not ready in time.
func (m *Master) checkUpgrade(now time.Time) {
	if m.upgradeFd >= 0 && now.After(m.upgradeDeadline) {
		m.log.Error("upgrade failed: the new master was not ready in time; still serving",
			"new_pid", m.upgradePid, "timeout", upgradeTimeout)
		m.sys.kill(m.upgradePid, unix.SIGKILL)
		m.poller.Delete(m.upgradeFd)
		unix.Close(m.upgradeFd)
		m.upgradeFd = -1
	}
}
