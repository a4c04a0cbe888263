package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// The admin listener serves /status (JSON) and /metrics (Prometheus text)
// from goroutines of the master process, never from a child and never from
// the master's loop: the loop publishes an immutable view of its children
// whenever they change, and the counters are read straight from the shared
// children's cells. Serving it costs the children nothing.

// view is what the loop publishes about the pool.
type view struct {
	gen      int
	children []childView
	retired  ipc.Snapshot
}

type childView struct {
	pid, slot, gen, cpu, cell int
	state                     string
	started                   time.Time
	h                         *health // live: written by the loop, read atomically
	stalledAt                 int64
	watchdogKills             uint64
	recycle, replaces         string
}

// publish makes the current children visible to the admin server.
func (m *Master) publish() {
	if m.admin == nil {
		return
	}
	v := &view{gen: m.gen, retired: m.retired}
	for _, k := range m.kids {
		if k.cell < 0 {
			continue
		}
		cv := childView{pid: k.pid, slot: k.slot, gen: k.gen, cpu: k.cpu,
			cell: k.cell, state: k.state.String(), started: k.started, h: &k.h, stalledAt: k.stalledAt,
			recycle: k.recycle, replaces: k.replaces}
		if k.slot < len(m.slots) {
			cv.watchdogKills = m.slots[k.slot].watchdogKills
		}
		v.children = append(v.children, cv)
	}
	m.admin.view.Store(v)
}

type admin struct {
	stats   *ipc.Stats
	mode    string
	started time.Time
	view    atomic.Pointer[view]
	srv     *http.Server
	rates   rates
	done    chan struct{}
	wg      sync.WaitGroup
	ln      net.Listener // the listener itself, to pass on at an upgrade
	file    *os.File     // its dup for a new master; nil until an upgrade asks
}

// Bounds of the admin listener: it runs in the master, often as root, with
// no authentication, so no client may hold it for long or hold much of it.
const (
	adminHeaderTimeout = 5 * time.Second  // connection open to the end of the request's headers
	adminReadTimeout   = 10 * time.Second // the whole request
	adminWriteTimeout  = 10 * time.Second // the response
	adminIdleTimeout   = 30 * time.Second // a keep-alive connection between requests
	adminMaxConns      = 32               // open connections; one more is closed at once
	adminMaxHeader     = 8 << 10
)

// startAdmin listens on addr: host:port on loopback (anywhere with
// AdminPublic), or unix:/path.
func (m *Master) startAdmin(addr string) error {
	network, address := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", p
	} else if host, _, err := net.SplitHostPort(addr); err == nil {
		// An empty host is IPv4's any address, as for -listen; and an IPv4
		// address binds IPv4 alone (Go's "tcp" makes 0.0.0.0 dual-stack).
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.To4() != nil {
			network = "tcp4"
		}
	}
	ln, err := inheritedAdmin(network, address)
	if ln == nil && err == nil {
		if network == "unix" {
			if err := clearStaleSocket(address); err != nil {
				return fmt.Errorf("-admin %s: %w", addr, err)
			}
		}
		ln, err = net.Listen(network, address)
	}
	if err != nil {
		return fmt.Errorf("-admin %s: %w", addr, err)
	}
	raw := ln
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() && !m.cfg.AdminPublic {
		ln.Close()
		return fmt.Errorf("-admin %s: listens on %s, beyond loopback, and the admin listener has no authentication: "+
			"use a loopback address or unix:PATH, or allow it with -admin-public", addr, ta.IP)
	}
	ln = &capListener{Listener: ln, slots: make(chan struct{}, adminMaxConns)}
	a := &admin{stats: m.stats, mode: m.cfg.Mode, started: time.Now(), done: make(chan struct{}), ln: raw}
	a.rates.last = map[int]sample{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", a.serveStatus)
	mux.HandleFunc("GET /metrics", a.serveMetrics)
	mux.HandleFunc("GET /readyz", m.lb.serveReady) // ready.go
	mux.HandleFunc("GET /healthz", serveHealth)
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: adminHeaderTimeout, ReadTimeout: adminReadTimeout,
		WriteTimeout: adminWriteTimeout, IdleTimeout: adminIdleTimeout, MaxHeaderBytes: adminMaxHeader,
		ErrorLog: log.New(io.Discard, "", 0)}
	m.admin = a
	m.publish()
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("admin server", "err", err)
		}
	}()
	go a.sample()
	m.log.Info("admin listening", "addr", ln.Addr().String())
	return nil
}

// clearStaleSocket removes path if it is a Unix socket nobody listens on,
// as one left by an earlier master would be. Anything else is refused: a
// file, a directory, a link, or a socket in use.
func clearStaleSocket(path string) error {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket; refusing to remove it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s: a process already listens on this socket", path)
	}
	if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "remove", Path: path, Err: err}
	}
	return nil
}

// capListener closes, at once, a connection beyond the number of slots.
type capListener struct {
	net.Listener
	slots chan struct{}
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &capConn{Conn: c, slots: l.slots}, nil
		default:
			c.Close()
		}
	}
}

type capConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}

func (a *admin) stop() {
	if a.file != nil {
		a.file.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.srv.Shutdown(ctx)
	close(a.done)
	a.wg.Wait()
}

// rates keeps the request counts of the last seconds per child, for req/s.
type rates struct {
	mu   sync.Mutex
	last map[int]sample // by pid
}

type sample struct {
	hist [rateWindow + 1]uint64
	n    int
}

const rateWindow = 5 // seconds

func (a *admin) sample() {
	defer a.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-a.done:
			return
		case <-t.C:
		}
		v := a.view.Load()
		a.rates.mu.Lock()
		seen := map[int]bool{}
		for _, c := range v.children {
			s := a.rates.last[c.pid]
			copy(s.hist[1:], s.hist[:rateWindow])
			s.hist[0] = a.stats.Cell(c.cell).Requests.Load()
			s.n = min(s.n+1, rateWindow+1)
			a.rates.last[c.pid] = s
			seen[c.pid] = true
		}
		for pid := range a.rates.last {
			if !seen[pid] {
				delete(a.rates.last, pid)
			}
		}
		a.rates.mu.Unlock()
	}
}

// rate is the child's requests per second over the last seconds.
func (a *admin) rate(pid int) float64 {
	a.rates.mu.Lock()
	defer a.rates.mu.Unlock()
	s, ok := a.rates.last[pid]
	if !ok || s.n < 2 {
		return 0
	}
	return float64(s.hist[0]-s.hist[s.n-1]) / float64(s.n-1)
}

// ChildStatus is one child in /status.
type ChildStatus struct {
	Pid         int               `json:"pid"`
	Slot        int               `json:"slot"`
	Generation  int               `json:"generation"`
	CPU         int               `json:"cpu"`
	State       string            `json:"state"`
	Started     time.Time         `json:"started"`
	RSSBytes    int64             `json:"rss_bytes"`
	Accepted    uint64            `json:"accepted"`
	Open        uint64            `json:"open"`
	Requests    uint64            `json:"requests"`
	ReqPerSec   float64           `json:"req_per_sec"`
	BytesIn     uint64            `json:"bytes_in"`
	BytesOut    uint64            `json:"bytes_out"`
	Responses   map[string]uint64 `json:"responses"`
	ParseErrors uint64            `json:"parse_errors"`
	Timeouts    uint64            `json:"timeouts"`
	// Backlog is how many connections wait in the child's channel (fdpass).
	Backlog uint64 `json:"backlog"`
	// Stalled: the child has a backlog and its loop has not turned for
	// -stall; the master deals around it.
	Stalled bool `json:"stalled"`
	// SinceProgress is how long ago the child last showed progress while
	// it owed some (0 when it owes nothing).
	SinceProgress float64 `json:"since_progress_seconds"`
	TakenBack     uint64  `json:"taken_back"`
	// HandedBack counts the connections the child gave back when retired.
	HandedBack uint64 `json:"handed_back"`
	// Recycle says why the child is being replaced (max-requests,
	// max-lifetime, max-rss); Replaces, why the child it replaced was.
	Recycle  string `json:"recycle,omitempty"`
	Replaces string `json:"replaces,omitempty"`
	// WatchdogKills counts the children of this slot the watchdog killed.
	WatchdogKills uint64 `json:"watchdog_kills"`
	InFlight      int64  `json:"in_flight"`
	// Request is the request the child is running, when one is.
	Request *RequestStatus `json:"request,omitempty"`
}

// RequestStatus is a request a child published as running.
type RequestStatus struct {
	Method string  `json:"method"`
	Path   string  `json:"path"`
	Age    float64 `json:"age_seconds"`
	Client string  `json:"client,omitempty"` // when the child knows it (ready.go)
}

// Status is the document /status serves.
type Status struct {
	MasterPid  int           `json:"master_pid"`
	Mode       string        `json:"mode"`
	Uptime     float64       `json:"uptime_seconds"`
	Generation int           `json:"generation"`
	Children   []ChildStatus `json:"children"`
}

func (a *admin) status() Status {
	v := a.view.Load()
	st := Status{MasterPid: os.Getpid(), Mode: a.mode, Uptime: time.Since(a.started).Seconds(),
		Generation: v.gen, Children: []ChildStatus{}}
	for _, c := range v.children {
		s := a.stats.Cell(c.cell).Load()
		cs := ChildStatus{Pid: c.pid, Slot: c.slot, Generation: c.gen, CPU: c.cpu, State: c.state,
			Started: c.started, RSSBytes: rss(c.pid), Accepted: s.Accepted, Open: s.Accepted - s.Closed,
			Requests: s.Requests, ReqPerSec: a.rate(c.pid), BytesIn: s.BytesIn, BytesOut: s.BytesOut,
			Responses: map[string]uint64{}, ParseErrors: s.ParseErrors, Timeouts: s.Timeouts}
		for class := 1; class <= 5; class++ {
			cs.Responses[strconv.Itoa(class)+"xx"] = s.Responses[class]
		}
		a.progress(&cs, c)
		st.Children = append(st.Children, cs)
	}
	return st
}

func (a *admin) serveStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(a.status())
}

// rss reads a process's resident set size from /proc/PID/statm.
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// progress fills in what the master knows of a child's progress.
func (a *admin) progress(cs *ChildStatus, c childView) {
	cell := a.stats.Cell(c.cell)
	now := time.Now().UnixNano()
	if a.mode == ModeFdpass {
		if sent, taken := c.h.sent.Load(), cell.Accepted.Load(); sent > taken {
			cs.Backlog = sent - taken
		}
	}
	cs.Stalled = c.h.stalled.Load()
	if cs.Backlog > 0 || cs.Stalled {
		cs.SinceProgress = time.Duration(now - c.h.progressAt.Load()).Seconds()
	}
	cs.TakenBack = c.h.takenBack.Load()
	cs.HandedBack = cell.HandedBack.Load()
	cs.Recycle, cs.Replaces = c.recycle, c.replaces
	cs.WatchdogKills = c.watchdogKills
	cs.InFlight = cell.Running()
	if method, path, start, ok := cell.Current(); ok {
		cs.Request = &RequestStatus{Method: method, Path: path, Age: time.Duration(now - start).Seconds(),
			Client: clientOf(cell)}
	}
}

// inheritedAdmin takes, in a master started by an upgrade, the admin
// listener the old master passed on, when it serves the address asked for
// (a port of 0 asks for any). The old master keeps serving on it until it
// exits; a different address closes it and nil is returned: listen anew.
func inheritedAdmin(network, address string) (net.Listener, error) {
	fd := inheritedFd(EnvAdminFd)
	if fd < 0 {
		return nil, nil
	}
	f := os.NewFile(uintptr(fd), "admin")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, nil // unusable: listen anew
	}
	if !sameAddr(ln.Addr(), network, address) {
		ln.Close()
		return nil, nil
	}
	return ln, nil
}

func sameAddr(a net.Addr, network, address string) bool {
	if network == "unix" {
		return a.Network() == "unix" && a.String() == address
	}
	if a.Network() != "tcp" { // tcp4 and tcp6 listeners say tcp
		return false
	}
	want, err := net.ResolveTCPAddr("tcp", address)
	got, ok := a.(*net.TCPAddr)
	return err == nil && ok && got.IP.Equal(want.IP) && (want.Port == 0 || got.Port == want.Port)
}

// fd is the admin listener as a new master inherits it; -1 when there is
// none, or with an error when it cannot be passed on. A Unix socket's path
// stays when this master closes it: the new master serves on it.
func (a *admin) fd() (int, error) {
	if a == nil || a.ln == nil {
		return -1, nil
	}
	if a.file == nil {
		f, ok := a.ln.(interface{ File() (*os.File, error) })
		if !ok {
			return -1, fmt.Errorf("a %T has no file", a.ln)
		}
		file, err := f.File()
		if err != nil {
			return -1, err
		}
		a.file = file
		if u, ok := a.ln.(*net.UnixListener); ok {
			u.SetUnlinkOnClose(false)
		}
	}
	// Not a.file.Fd(): it puts the file description, which this master's
	// listener shares, in blocking mode, and an accept that waits in the
	// kernel is not woken when the listener closes: the exit would hang.
	rc, err := a.file.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}
