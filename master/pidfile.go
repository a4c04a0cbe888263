package master

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Pidfile is a file holding the master's pid, locked with flock while the
// master runs. The lock, not the file's existence, says whether a master is
// running: a file left behind by a crash is unlocked and simply taken over.
type Pidfile struct {
	path string
	mu   sync.Mutex
	fd   int // -1 while not held
}

// Path is the file's name.
func (p *Pidfile) Path() string { return p.path }

// PendingPidfile is a pidfile this process will hold once Take returns: a
// master started by an upgrade knows its pidfile before it may lock it.
func PendingPidfile(path string) *Pidfile { return &Pidfile{path: path, fd: -1} }

// Take waits until the current holder lets go of the lock, then takes it
// and writes this process's pid. It blocks; call it off the loop.
func (p *Pidfile) Take() error {
	q, err := takePidfile(p.path)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.fd = q.fd
	p.mu.Unlock()
	return nil
}

// ErrNotRunning means no master holds the pidfile's lock.
var ErrNotRunning = errors.New("not running")

// CreatePidfile locks path and writes this process's pid into it. When another
// live process holds it, the error says "already running (pid N)".
func CreatePidfile(path string) (*Pidfile, error) {
	return lockPidfile(path, unix.LOCK_EX|unix.LOCK_NB)
}

// takePidfile waits until the current holder lets go of the lock, then
// takes it and writes this process's pid: how an upgraded master inherits
// the pidfile. It blocks; call it off the loop.
func takePidfile(path string) (*Pidfile, error) {
	return lockPidfile(path, unix.LOCK_EX)
}

// lockPidfile opens path, takes its lock as how says, and writes our pid.
func lockPidfile(path string, how int) (*Pidfile, error) {
	for try := 0; ; try++ {
		fd, err := openPidfile(path, unix.O_RDWR|unix.O_CREAT)
		if err != nil {
			return nil, err
		}
		if err := flock(fd, how); err != nil {
			pid, _ := readPid(fd)
			unix.Close(fd)
			if err == unix.EWOULDBLOCK {
				return nil, fmt.Errorf("already running (pid %d, pidfile %s)", pid, path)
			}
			return nil, fmt.Errorf("pidfile %s: lock: %w", path, err)
		}
		// The holder we waited for, or raced with, may have removed the
		// file before it let go: our lock is then on a name nobody can
		// find, and a third master would start beside us. Lock the file
		// the path names now.
		if same, err := namesFd(path, fd); err != nil || !same {
			unix.Close(fd)
			if err != nil {
				return nil, fmt.Errorf("pidfile %s: %w", path, err)
			}
			if try == 100 {
				return nil, fmt.Errorf("pidfile %s: the file keeps being removed or replaced", path)
			}
			continue
		}
		p := &Pidfile{path: path, fd: fd}
		if err := p.Write(os.Getpid()); err != nil {
			unix.Close(fd)
			return nil, err
		}
		return p, nil
	}
}

// openPidfile opens path without following a symbolic link, and refuses
// anything but a regular file with one name: a pidfile is truncated and
// written, so a link planted in a writable directory would otherwise make
// the master overwrite whatever it points at.
func openPidfile(path string, flags int) (int, error) {
	fd, err := unix.Open(path, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
	if err == unix.ELOOP {
		return -1, fmt.Errorf("pidfile %s is a symbolic link; refusing to follow it", path)
	}
	if err != nil {
		return -1, fmt.Errorf("pidfile %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("pidfile %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		unix.Close(fd)
		return -1, fmt.Errorf("pidfile %s is not a regular file; refusing to use it", path)
	case st.Nlink > 1:
		unix.Close(fd)
		return -1, fmt.Errorf("pidfile %s has %d hard links; refusing to write through it", path, st.Nlink)
	}
	return fd, nil
}

// namesFd reports whether path still names the file open as fd.
func namesFd(path string, fd int) (bool, error) {
	var byFd, byPath unix.Stat_t
	if err := unix.Fstat(fd, &byFd); err != nil {
		return false, err
	}
	if err := unix.Lstat(path, &byPath); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	return byFd.Dev == byPath.Dev && byFd.Ino == byPath.Ino, nil
}

// Write replaces the pid in the file.
func (p *Pidfile) Write(pid int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return fmt.Errorf("pidfile %s: not held", p.path)
	}
	b := []byte(strconv.Itoa(pid) + "\n")
	if err := unix.Ftruncate(p.fd, 0); err != nil {
		return fmt.Errorf("pidfile %s: %w", p.path, err)
	}
	if _, err := unix.Pwrite(p.fd, b, 0); err != nil {
		return fmt.Errorf("pidfile %s: %w", p.path, err)
	}
	return nil
}

// handOver unlocks the file and leaves it in place, for a successor.
func (p *Pidfile) handOver() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.release()
}

func (p *Pidfile) release() {
	if p.fd >= 0 {
		unix.Close(p.fd) // closing drops the flock
		p.fd = -1
	}
}

// Remove deletes the file if this process still holds it.
// The reload outcomes this process recorded beside it go too.
func (p *Pidfile) Remove() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return
	}
	if same, err := namesFd(p.path, p.fd); err == nil && same {
		os.Remove(p.path)
	}
	removeReloadOutcome(p.path)
	p.release()
}

// RunningPid returns the pid of the master holding path's lock, or
// ErrNotRunning.
func RunningPid(path string) (int, error) {
	fd, err := openPidfile(path, unix.O_RDONLY)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, ErrNotRunning
		}
		return 0, err
	}
	defer unix.Close(fd)
	switch err := flock(fd, unix.LOCK_SH|unix.LOCK_NB); err {
	case nil:
		return 0, ErrNotRunning // nobody holds it: a stale file
	case unix.EWOULDBLOCK: // held: the pid in it is the master's
	default:
		return 0, fmt.Errorf("pidfile %s: lock: %w", path, err)
	}
	pid, err := readPid(fd)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: no pid in it", path)
	}
	return pid, nil
}

func readPid(fd int) (int, error) {
	var buf [32]byte
	n, err := unix.Pread(fd, buf[:], 0)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(buf[:n])))
}

func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}
