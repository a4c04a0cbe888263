package main

import (
	"fmt"
	"io"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

// takePidfile waits for the old master of an upgrade to release the
// pidfile, then holds it.
func takePidfile(p *master.Pidfile) {
	if err := p.Take(); err != nil {
		fmt.Fprintf(os.Stderr, "procpool: %v\n", err)
	}
}

// checkChildFiles opens what a child opens at its start, as the user the
// children run as (cred; nil for this process's own), so that a file they
// cannot open stops the start with its name instead of failing every child.
func (s *settings) checkChildFiles(cred *syscall.Credential) error {
	if s.access == "" {
		return nil
	}
	if err := checkWritable(s.access, cred); err != nil {
		if cred != nil {
			return fmt.Errorf("-access-log: %w (as user %s)", err, s.user)
		}
		return fmt.Errorf("-access-log: %w", err)
	}
	return nil
}

// checkWritable opens path for appending, creating it if need be, as a
// log is opened, but without following a symbolic link. With cred the
// open runs on a thread of its own that takes cred's file-system ids and
// groups (setfsuid, setfsgid, setgroups: per-thread system calls) and
// then dies with them: the rest of the process keeps its own.
func checkWritable(path string, cred *syscall.Credential) error {
	errc := make(chan error, 1)
	go func() {
		if cred != nil {
			// Never unlocked: the thread exits with this goroutine.
			runtime.LockOSThread()
			groups := make([]int, len(cred.Groups))
			for i, g := range cred.Groups {
				groups[i] = int(g)
			}
			if err := unix.Setgroups(groups); err != nil {
				errc <- os.NewSyscallError("setgroups", err)
				return
			}
			unix.Setfsgid(int(cred.Gid))
			unix.Setfsuid(int(cred.Uid))
		}
		errc <- openAppend(path, func(fd int) error { return nil })
	}()
	return <-errc
}

// openAppend opens path as a log file, without following a symbolic link,
// and hands the fd to use, then closes it.
func openAppend(path string, use func(fd int) error) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
	if err == unix.ELOOP {
		return fmt.Errorf("%s is a symbolic link; refusing to follow it", path)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	return use(fd)
}

// setComm names every thread of this process, as ps, top and pgrep show
// it (/proc/PID/comm, at most 15 bytes). Threads started later are named
// after the thread that starts them, so naming all of them now is enough.
func setComm(name string) {
	for range 3 { // again, should a thread have started meanwhile
		tids, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return
		}
		renamed := 0
		for _, t := range tids {
			path := "/proc/self/task/" + t.Name() + "/comm"
			if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == name {
				continue
			}
			if os.WriteFile(path, []byte(name), 0) == nil {
				renamed++
			}
		}
		if renamed == 0 {
			return
		}
	}
}

// terminal returns a second handle on stderr for a master whose -log is
// about to take fd 2 over, when stderr is another file (a terminal, the
// pipe of a supervisor); nil otherwise.
func terminal(stderr io.Writer, logPath string) *os.File {
	if logPath == "" || stderr != io.Writer(os.Stderr) {
		return nil
	}
	var st unix.Stat_t
	var log unix.Stat_t
	if unix.Fstat(2, &st) != nil {
		return nil
	}
	if unix.Stat(logPath, &log) == nil && log.Dev == st.Dev && log.Ino == st.Ino {
		return nil // a detached master: stderr is the log already
	}
	fd, err := unix.FcntlInt(2, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "terminal")
}

// lookupUser resolves -user into the credentials children are started with.
func lookupUser(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("-user %s: the master must start as root to switch users", name)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("-user: %v", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("-user %s: non-numeric uid or gid", name)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}, nil
}
