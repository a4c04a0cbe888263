package master

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// This file is what `procpool -s` learns from the master beyond a signal:
// why a master stopped on its own, and the verdict on each reload.

// ErrChildrenFailed is what Run returns when the master stopped because
// every child of its pool exited with status 2 (a fatal error such as a log
// file it cannot open): the pool cannot run, and retrying would not help.
var ErrChildrenFailed = errors.New("every child failed fatally (exit status 2)")

// stopErr is what the loop returns once the master has stopped.
func (m *Master) stopErr() error {
	if m.childrenFailed {
		return ErrChildrenFailed
	}
	return nil
}

// reloadSuffix names the file beside the pidfile where the master records
// the outcome of each reload, for `procpool -s reload` to wait on.
const reloadSuffix = ".reload"

// ReloadOutcome is one line of the reload file:
//
//	PID SEQ ok generation GEN
//	PID SEQ rejected: REASON
//
// PID is the master's, SEQ counts its reloads from 1.
type ReloadOutcome struct {
	Pid, Seq int
	OK       bool
	Gen      int    // the generation started, when OK
	Reason   string // why not, when rejected
}

func (o ReloadOutcome) String() string {
	if o.OK {
		return fmt.Sprintf("%d %d ok generation %d\n", o.Pid, o.Seq, o.Gen)
	}
	return fmt.Sprintf("%d %d rejected: %s\n", o.Pid, o.Seq, strings.ReplaceAll(o.Reason, "\n", " "))
}

// ReadReloadOutcome reads the reload file beside pidfile. A missing file
// is the zero outcome, not an error.
func ReadReloadOutcome(pidfile string) (ReloadOutcome, error) {
	path := pidfile + reloadSuffix
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return ReloadOutcome{}, nil
	}
	if err != nil {
		return ReloadOutcome{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var buf [4096]byte
	n, err := unix.Read(fd, buf[:])
	if err != nil {
		return ReloadOutcome{}, &os.PathError{Op: "read", Path: path, Err: err}
	}
	return parseReloadOutcome(string(buf[:n]))
}

func parseReloadOutcome(s string) (ReloadOutcome, error) {
	var o ReloadOutcome
	f := strings.SplitN(strings.TrimSpace(s), " ", 3)
	if len(f) < 3 {
		return o, fmt.Errorf("reload file: bad line %q", s)
	}
	var err1, err2 error
	o.Pid, err1 = strconv.Atoi(f[0])
	o.Seq, err2 = strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return o, fmt.Errorf("reload file: bad line %q", s)
	}
	if g, ok := strings.CutPrefix(f[2], "ok generation "); ok {
		o.OK = true
		o.Gen, err1 = strconv.Atoi(g)
	} else if r, ok := strings.CutPrefix(f[2], "rejected: "); ok {
		o.Reason = r
	} else {
		err1 = errors.New("")
	}
	if err1 != nil {
		return o, fmt.Errorf("reload file: bad line %q", s)
	}
	return o, nil
}

// noteReload is called at the start of reload; the function it returns,
// deferred, records the outcome in the reload file. It learns why a
// reload was rejected by watching what cfg.Reload returns.
func (m *Master) noteReload() func() {
	gen, reload := m.gen, m.cfg.Reload
	var reason string
	if reload != nil {
		m.cfg.Reload = func() (Config, error) {
			cfg, err := reload()
			switch {
			case err != nil:
				reason = err.Error()
			case cfg.Listen != m.cfg.Listen || cfg.Mode != m.cfg.Mode:
				reason = "listen and mode change only with a restart or an upgrade"
			}
			return cfg, err
		}
	}
	return func() {
		m.cfg.Reload = reload
		if m.cfg.Pidfile == nil {
			return
		}
		o := ReloadOutcome{Pid: os.Getpid(), OK: m.gen > gen, Gen: m.gen, Reason: reason}
		if !o.OK && o.Reason == "" {
			o.Reason = "see the master's log"
		}
		if err := writeReloadOutcome(m.cfg.Pidfile.Path(), o); err != nil {
			m.log.Error("reload: cannot record the outcome for procpool -s", "err", err)
		}
	}
}

// writeReloadOutcome replaces the reload file in one rename, numbering the
// outcome after the last one this process wrote there.
func writeReloadOutcome(pidfile string, o ReloadOutcome) error {
	if last, err := ReadReloadOutcome(pidfile); err == nil && last.Pid == o.Pid {
		o.Seq = last.Seq
	}
	o.Seq++
	path := pidfile + reloadSuffix
	tmp := path + "." + strconv.Itoa(o.Pid)
	unix.Unlink(tmp) // a leftover of an earlier crash of this pid
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "open", Path: tmp, Err: err}
	}
	_, err = unix.Write(fd, []byte(o.String()))
	unix.Close(fd)
	if err == nil {
		err = unix.Rename(tmp, path)
	}
	if err != nil {
		unix.Unlink(tmp)
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}

// removeReloadOutcome deletes the reload file with the pidfile, whichever
// master wrote it last (after an upgrade, maybe the old one): once the
// pidfile is removed, no master answers through it.
func removeReloadOutcome(pidfile string) {
	unix.Unlink(pidfile + reloadSuffix)
}
