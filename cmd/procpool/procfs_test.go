package main

// What the tests learn about the server's processes, they read from /proc:
// process state and parentage, CPU time and memory, open fds, the kernel's
// TCP socket table, and per-thread CPU masks. Each file has one reader
// here.

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
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

// procStat is what the tests use of /proc/PID/stat (or of a thread's
// /proc/PID/task/TID/stat).
type procStat struct {
	state   byte
	ppid    int
	session int
	ttyNr   int
	cpu     time.Duration // user plus system time
	start   uint64        // in clock ticks since boot
	policy  int           // scheduling policy: 0 SCHED_OTHER, 3 SCHED_BATCH
}

func readStat(pid int) (procStat, error) {
	return readStatFile(fmt.Sprintf("/proc/%d/stat", pid))
}

func readStatFile(path string) (procStat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, err
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')', with field 3 (the state) at f[0].
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("%s: no ')'", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 41-2 {
		return procStat{}, fmt.Errorf("%s: %d fields", path, len(f))
	}
	field := func(n int) int64 {
		v, e := strconv.ParseInt(f[n-3], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("%s: field %d: %q", path, n, f[n-3])
		}
		return v
	}
	st := procStat{state: f[0][0], ppid: int(field(4)), session: int(field(6)), ttyNr: int(field(7)),
		start: uint64(field(22)), policy: int(field(41))}
	// utime and stime count USER_HZ ticks, 1/100 s on Linux.
	st.cpu = time.Duration(field(14)+field(15)) * 10 * time.Millisecond
	return st, err
}

// threadFiles names the file /proc/PID/task/TID/name of every thread of
// pid, by tid. A thread may exit before its file is read: readers skip
// fs.ErrNotExist.
func threadFiles(pid int, name string) (map[int]string, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/%s", pid, name))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("process %d has no threads in /proc", pid)
	}
	m := map[int]string{}
	for _, f := range files {
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		m[tid] = f
	}
	return m, nil
}

// allThreadsStopped reports whether every thread of pid is stopped (state T).
func allThreadsStopped(pid int) bool {
	files, err := threadFiles(pid, "stat")
	if err != nil {
		return false
	}
	for _, f := range files {
		st, err := readStatFile(f)
		if err == nil && st.state != 'T' || err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false
		}
	}
	return true
}

func identify(pid int) (procID, error) {
	st, err := readStat(pid)
	if err != nil {
		return procID{}, err
	}
	return procID{pid: pid, start: st.start}, nil
}

// identifyAll identifies every one of pids, which must all be running.
func identifyAll(t *testing.T, pids []int) []procID {
	t.Helper()
	ids := make([]procID, 0, len(pids))
	for _, pid := range pids {
		id, err := identify(pid)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
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

// stillAlive are those of ids that still run.
func stillAlive(ids []procID) []procID {
	var l []procID
	for _, id := range ids {
		if id.alive() {
			l = append(l, id)
		}
	}
	return l
}

// waitGone polls until none of ids runs, for up to timeout.
func waitGone(ids []procID, timeout time.Duration) bool {
	return pollFor(timeout, func() bool { return len(stillAlive(ids)) == 0 })
}

func pidAlive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && st.state != 'Z' && st.state != 'X'
}

// cpuTime is the CPU time pid has used, all its threads together, to the
// 10 ms.
func cpuTime(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	return st.cpu, err
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

// childrenOf is childPids for a test: it fails on an error.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	pids, err := childPids(pid)
	if err != nil {
		t.Fatalf("children of %d: %v", pid, err)
	}
	return pids
}

// runsBinary reports whether pid runs the binary TestMain built.
func runsBinary(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && exe == binPath
}

// procsWith lists the live processes of this test's binary whose command
// line mentions s.
func procsWith(s string) []procID {
	dirs, _ := os.ReadDir("/proc")
	var l []procID
	for _, e := range dirs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !runsBinary(pid) {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		if id, err := identify(pid); err == nil && id.alive() {
			l = append(l, id)
		}
	}
	return l
}

// readStatus reads a status file (/proc/PID/status, or a thread's): each
// "Name:\tvalue" line, by name.
func readStatus(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok {
			m[name] = strings.TrimSpace(value)
		}
	}
	return m, nil
}

// statusField is the named field of /proc/PID/status, split into words.
func statusField(t *testing.T, pid int, name string) []string {
	t.Helper()
	m, err := readStatus(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m[name]
	if !ok {
		t.Fatalf("no %s in /proc/%d/status", name, pid)
	}
	return strings.Fields(v)
}

// rss is the resident memory of pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	f := statusField(t, pid, "VmRSS")
	kb, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || len(f) != 2 || f[1] != "kB" {
		t.Fatalf("/proc/%d/status: VmRSS %q", pid, f)
	}
	return kb << 10
}

// totalRSS is the resident memory of pids together.
func totalRSS(t *testing.T, pids []int) int64 {
	t.Helper()
	var sum int64
	for _, pid := range pids {
		sum += rss(t, pid)
	}
	return sum
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

// tcpEntry is one line of /proc/net/tcp.
type tcpEntry struct {
	lport, rport     int
	state            int
	txQueue, rxQueue int64  // bytes written and not acknowledged, received and not read
	inode            uint64 // 0 when no process holds it: queued for accept, or TIME_WAIT
}

// tcpTable reads the IPv4 TCP sockets on local port from /proc/net/tcp.
//
// The kernel produces that file a page or so per read(2), walking its hash
// tables anew each time and resuming by position, so a table that changes
// while it is read (other tests and other programs open and close
// connections all the time) can show a socket twice or skip one: callers
// that need an exact picture poll until it holds.
func tcpTable(port int) ([]tcpEntry, error) {
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
		tx, rx, _ := strings.Cut(fl[4], ":")
		e := tcpEntry{lport: port, rport: parsePort(fl[2]), state: int(st)}
		e.txQueue, _ = strconv.ParseInt(tx, 16, 64)
		e.rxQueue, _ = strconv.ParseInt(rx, 16, 64)
		e.inode, _ = strconv.ParseUint(fl[9], 10, 64)
		entries = append(entries, e)
	}
	return entries, sc.Err()
}

// heldSockets are the sockets of tcpTable(port) that a process holds, each
// once.
func heldSockets(port int) ([]tcpEntry, error) {
	table, err := tcpTable(port)
	seen := map[uint64]bool{}
	return slices.DeleteFunc(table, func(e tcpEntry) bool {
		if e.inode == 0 || seen[e.inode] {
			return true
		}
		seen[e.inode] = true
		return false
	}), err
}

// serverSocket is the server's end of the connection from client port peer
// to local port port; found is false when the table does not show it.
func serverSocket(t *testing.T, port, peer int) (e tcpEntry, found bool) {
	t.Helper()
	table, err := tcpTable(port)
	if err != nil {
		t.Fatal(err)
	}
	return entryFor(table, peer)
}

// entryFor is the entry of table for client port peer. Of two entries (an
// old one in TIME_WAIT, a new one), the one a process holds wins.
func entryFor(table []tcpEntry, peer int) (e tcpEntry, found bool) {
	for _, x := range table {
		if x.rport == peer && (!found || e.inode == 0) {
			e, found = x, true
		}
	}
	return e, found
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
	table, err := heldSockets(port)
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

// waitNoListener fails unless, within a few seconds, nothing listens on
// the server's port any more.
func (s *server) waitNoListener(t *testing.T, after string) {
	t.Helper()
	none := func(l sockets) bool { return l.total == 0 }
	if l := pollOwners(t, none, s.port, tcpListen, nil); !none(l) {
		t.Fatalf("%d sockets still listen on port %d after %s", l.total, s.port, after)
	}
}

// listensAlone reports whether, within a few seconds, the master's is the
// one socket listening on the server's port.
func (s *server) listensAlone(t *testing.T) (sockets, bool) {
	t.Helper()
	one := func(l sockets) bool { return l.total == 1 && l.byPid[s.pid] == 1 }
	l := pollOwners(t, one, s.port, tcpListen, nil, s.pid)
	return l, one(l)
}

// waitHolder waits until one of pids holds the server side of c with
// nothing left unread, and returns it.
func (s *server) waitHolder(t *testing.T, c *clientConn, pids []int) int {
	t.Helper()
	peer := c.LocalAddr().(*net.TCPAddr).Port
	holder := 0
	if !pollFor(startTimeout, func() bool {
		e, found := serverSocket(t, s.port, peer)
		if !found || e.inode == 0 || e.rxQueue != 0 {
			return false
		}
		for _, pid := range pids {
			if inodes, err := socketInodes(pid); err == nil && inodes[e.inode] {
				holder = pid
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no child of %v holds the connection from port %d with nothing left unread", pids, peer)
	}
	return holder
}

// held reports whether a process holds the server side of the connection
// from client port peer (an orphan the kernel still winds down, or a socket
// gone, is not held), and how many received bytes wait in it unread.
func (s *server) held(t *testing.T, peer int) (held bool, unread int64) {
	t.Helper()
	e, found := serverSocket(t, s.port, peer)
	return found && e.inode != 0, e.rxQueue
}

// threadCPUs maps each thread of pid to the CPUs it may run on.
func threadCPUs(pid int) (map[int][]int, error) {
	files, err := threadFiles(pid, "status")
	if err != nil {
		return nil, err
	}
	m := map[int][]int{}
	for tid, f := range files {
		st, err := readStatus(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		v, ok := st["Cpus_allowed_list"]
		if !ok {
			return nil, fmt.Errorf("%s: no Cpus_allowed_list", f)
		}
		if m[tid], err = parseCPUList(v); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
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
