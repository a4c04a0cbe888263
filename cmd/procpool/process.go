package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

// pidfileHolder holds the pidfile across the goroutine that takes it over
// after an upgrade and the exit path that removes it.
type pidfileHolder struct {
	mu sync.Mutex
	p  *master.Pidfile
}

func (h *pidfileHolder) set(p *master.Pidfile) {
	h.mu.Lock()
	h.p = p
	h.mu.Unlock()
}

// take waits for the old master to release path, then holds it.
func (h *pidfileHolder) take(path string) {
	p, err := master.TakePidfile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "procpool: %v\n", err)
		return
	}
	h.set(p)
}

func (h *pidfileHolder) remove() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.p != nil {
		h.p.Remove()
	}
}

// inheritedFd is the listening socket an old master passed at an upgrade.
func inheritedFd() int {
	fd, err := strconv.Atoi(os.Getenv(master.EnvInheritFd))
	os.Unsetenv(master.EnvInheritFd)
	if err != nil || fd < 3 {
		return 0
	}
	return fd
}

// upgradeReporter returns, in a master started by an upgrade, the function
// that tells the old master this one is ready; nil otherwise.
func upgradeReporter() func() {
	fd, err := strconv.Atoi(os.Getenv(master.EnvUpgradeFd))
	os.Unsetenv(master.EnvUpgradeFd)
	if err != nil || fd < 3 {
		return nil
	}
	unix.CloseOnExec(fd)
	return func() {
		unix.Write(fd, []byte{'R'})
		unix.Close(fd)
	}
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
