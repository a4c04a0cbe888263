package main

// What the tests learn about the server's processes, they read from /proc:
// process state and parentage, open fds, the kernel's TCP socket table, and
// per-thread CPU masks.

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procID names a process by pid and start time, so that a pid the kernel
// reuses is never taken for the process that had it.
type procID struct {
	pid   int
	start uint64 // in clock ticks since boot; 0 if the process was gone when seen
}

type procStat struct {
	state byte
	ppid  int
	start uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var st procStat
	st.state = f[0][0]
	st.ppid, _ = strconv.Atoi(f[1])
	st.start, err = strconv.ParseUint(f[19], 10, 64)
	return st, err
}

func identify(pid int) (procID, error) {
	st, err := readStat(pid)
	if err != nil {
		return procID{}, err
	}
	return procID{pid: pid, start: st.start}, nil
}

// alive reports whether the process still runs: it exists, is the same
// process, and is not a zombie.
func (id procID) alive() bool {
	st, err := readStat(id.pid)
	if err != nil || st.start != id.start {
		return false
	}
	return st.state != 'Z' && st.state != 'X'
}

func pidAlive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && st.state != 'Z' && st.state != 'X'
}

// childPids lists the live (not zombie) children of pid, sorted.
func childPids(pid int) ([]int, error) {
	var pids []int
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	readAll := len(files) > 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			readAll = false
			break
		}
		for _, s := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(s)
			pids = append(pids, n)
		}
	}
	if !readAll {
		// No /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN off): scan.
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return nil, err
		}
		pids = pids[:0]
		dirs, err := os.ReadDir("/proc")
		if err != nil {
			return nil, err
		}
		for _, d := range dirs {
			n, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if st, err := readStat(n); err == nil && st.ppid == pid {
				pids = append(pids, n)
			}
		}
	}
	live := pids[:0]
	for _, p := range pids {
		if pidAlive(p) {
			live = append(live, p)
		}
	}
	slices.Sort(live)
	return slices.Compact(live), nil
}

// fdTargets maps each open fd of pid to what it refers to.
func fdTargets(pid int) (map[int]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	m := make(map[int]string, len(ents))
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // closed while we looked
		}
		if err != nil {
			return nil, err
		}
		m[fd] = target
	}
	return m, nil
}

// fdCount is the number of fds pid holds open.
func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// socketInodes are the inodes of the sockets pid holds.
func socketInodes(pid int) (map[uint64]bool, error) {
	fds, err := fdTargets(pid)
	if err != nil {
		return nil, err
	}
	m := map[uint64]bool{}
	for _, target := range fds {
		if s, ok := strings.CutPrefix(target, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				m[n] = true
			}
		}
	}
	return m, nil
}

// TCP states as /proc/net/tcp writes them.
const (
	tcpEstablished = 0x01
	tcpListen      = 0x0A
)

type tcpEntry struct {
	lport, rport int
	state        int
	inode        uint64
}

// tcpSockets reads the IPv4 TCP sockets on local port from /proc/net/tcp.
//
// The kernel produces that file a page or so per read(2), walking its hash
// tables anew each time and resuming by position, so a table that changes
// while it is read (other tests and other programs open and close
// connections all the time) can show a socket twice or skip one. Sockets
// are deduplicated by inode here; callers that need an exact picture poll
// until it holds (see pollOwners).
func tcpSockets(port int) ([]tcpEntry, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The file may be megabytes long on a busy machine: look closely only
	// at lines that mention the port.
	hex := fmt.Sprintf(":%04X ", port)
	parsePort := func(addr string) int {
		_, p, _ := strings.Cut(addr, ":")
		n, _ := strconv.ParseUint(p, 16, 16)
		return int(n)
	}
	var entries []tcpEntry
	seen := map[uint64]bool{}
	sc := bufio.NewScanner(bufio.NewReaderSize(f, 256<<10))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, hex) {
			continue
		}
		fl := strings.Fields(line)
		if len(fl) < 10 || parsePort(fl[1]) != port {
			continue
		}
		st, _ := strconv.ParseUint(fl[3], 16, 8)
		inode, _ := strconv.ParseUint(fl[9], 10, 64)
		if inode == 0 || seen[inode] {
			continue // a socket no process holds (TIME_WAIT), or a repeat
		}
		seen[inode] = true
		entries = append(entries, tcpEntry{lport: port, rport: parsePort(fl[2]), state: int(st), inode: inode})
	}
	return entries, sc.Err()
}

// sockets is who holds the server-side sockets of one local port in one state.
type sockets struct {
	total   int         // entries in the TCP table
	byPid   map[int]int // how many each of the given processes holds
	unowned int         // held by none of them
}

// socketOwners maps the TCP sockets on local port in state to the processes
// pids that hold them, by inode. With peers, only the sockets connected to
// one of those client ports count: a client elsewhere on the machine may
// reach the same port (say, one that still thinks an earlier server there
// is up).
func socketOwners(t *testing.T, port, state int, peers map[int]bool, pids ...int) sockets {
	t.Helper()
	table, err := tcpSockets(port)
	if err != nil {
		t.Fatal(err)
	}
	owner := map[uint64]int{}
	for _, pid := range pids {
		inodes, err := socketInodes(pid)
		if err != nil {
			t.Fatalf("sockets of %d: %v", pid, err)
		}
		for ino := range inodes {
			owner[ino] = pid
		}
	}
	s := sockets{byPid: map[int]int{}}
	for _, e := range table {
		if e.state != state || peers != nil && !peers[e.rport] {
			continue
		}
		s.total++
		if pid, ok := owner[e.inode]; ok {
			s.byPid[pid]++
		} else {
			s.unowned++
		}
	}
	for _, pid := range pids {
		s.byPid[pid] += 0
	}
	return s
}

// pollOwners polls socketOwners until want holds for what it finds, for up
// to a few seconds (see tcpTable for why a single look may mislead), and
// returns the last result.
func pollOwners(t *testing.T, want func(sockets) bool, port, state int, peers map[int]bool, pids ...int) sockets {
	t.Helper()
	var got sockets
	pollFor(3*time.Second, func() bool {
		got = socketOwners(t, port, state, peers, pids...)
		return want(got)
	})
	return got
}

// threadCPUs maps each thread of pid to the CPUs it may run on.
func threadCPUs(pid int) (map[int][]int, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("process %d has no threads in /proc", pid)
	}
	m := map[int][]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				cpus, err := parseCPUList(strings.TrimSpace(v))
				if err != nil {
					return nil, fmt.Errorf("%s: %v", f, err)
				}
				m[tid] = cpus
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: no Cpus_allowed_list", f)
		}
	}
	return m, nil
}

// parseCPUList reads the kernel's list format: "0-3,8,10-11".
func parseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("cpu list %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("cpu list %q", s)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}
