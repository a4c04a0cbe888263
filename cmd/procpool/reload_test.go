package main

// Reloads and upgrades lose nothing: under load from a keep-alive client
// and from clients that open a connection per request, ten SIGHUPs and a
// binary upgrade fail no request and refuse no connection; a config that
// does not parse or a binary that does not start leave the running pool
// alone.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Shape and bounds of loadGen.
const (
	loadKeepAlive = 32               // goroutines sharing 32 keep-alive connections
	loadFresh     = 4                // goroutines opening a connection per request
	loadMaxTime   = 40 * time.Second // no load runs longer, whatever the test does
	loadMaxCount  = 200000           // requests per goroutine at most
)

// loadGen is a bounded HTTP load on a server: GET / and POST /echo
// alternately, every answer checked. The keep-alive client is net/http's,
// which silently resends a replayable request when a reused connection
// turns out to be closed by the server (RFC 9112 §9.3.1): a request the
// server dropped would go unseen. A trace hook sees every connection a
// request is sent on, so such a resend is counted, and check fails on any.
// (The POSTs carry an Idempotency-Key, so that net/http treats them as
// replayable too and they are counted the same way rather than failing.)
// The fresh connections never retry: a connection refused or cut there is
// a failure.
type loadGen struct {
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	ok      atomic.Int64
	failed  atomic.Int64
	refused atomic.Int64
	retried atomic.Int64 // requests net/http resent: the server dropped them
	mu      sync.Mutex
	errs    []string // the first few failures
	ka      *http.Transport
	fresh   *http.Transport
}

func startLoad(t *testing.T, addr string) *loadGen {
	l := &loadGen{stop: make(chan struct{})}
	l.ka = &http.Transport{MaxIdleConnsPerHost: loadKeepAlive, MaxConnsPerHost: loadKeepAlive,
		DisableCompression: true}
	l.fresh = &http.Transport{DisableKeepAlives: true, DisableCompression: true}
	ka := &http.Client{Transport: l.ka, Timeout: ioTimeout}
	fresh := &http.Client{Transport: l.fresh, Timeout: ioTimeout}
	url := "http://" + addr
	until := time.Now().Add(loadMaxTime)
	for w := range loadKeepAlive + loadFresh {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c, isFresh := ka, w >= loadKeepAlive
			if isFresh {
				c = fresh
			}
			for i := 0; i < loadMaxCount && time.Now().Before(until); i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				l.request(c, url, w, i, !isFresh)
			}
		}()
	}
	t.Cleanup(l.finish) // before the server's stop, which was registered earlier
	return l
}

func (l *loadGen) request(c *http.Client, url string, w, i int, keepAlive bool) {
	var req *http.Request
	want := helloBody
	if i%2 == 0 {
		req, _ = http.NewRequest("GET", url+"/", nil)
	} else {
		want = fmt.Sprintf("worker %d request %d %s", w, i, strings.Repeat("x", i%200))
		req, _ = http.NewRequest("POST", url+"/echo", strings.NewReader(want))
		if keepAlive {
			req.Header.Set("Idempotency-Key", fmt.Sprintf("%d-%d", w, i))
		}
	}
	// A request that gets a connection more than once was sent again: the
	// server closed the first connection without answering it.
	var conns atomic.Int32
	req = req.WithContext(httptrace.WithClientTrace(req.Context(),
		&httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { conns.Add(1) }}))
	resp, err := c.Do(req)
	if n := conns.Load(); n > 1 {
		l.retried.Add(1)
		l.note("%s %s: sent %d times: the server closed a connection it had been sent on without answering", req.Method, req.URL.Path, n)
	}
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			l.refused.Add(1)
		}
		l.fail("%s %s: %v", req.Method, req.URL.Path, err)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		l.fail("%s %s: reading the body: %v", req.Method, req.URL.Path, err)
	case resp.StatusCode != 200 || string(body) != want:
		l.fail("%s %s: status %d body %q, want 200 %q", req.Method, req.URL.Path, resp.StatusCode, body, want)
	default:
		l.ok.Add(1)
	}
}

func (l *loadGen) fail(format string, a ...any) {
	l.failed.Add(1)
	l.note(format, a...)
}

// note keeps the first few failures for the report.
func (l *loadGen) note(format string, a ...any) {
	l.mu.Lock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, fmt.Sprintf(format, a...))
	}
	l.mu.Unlock()
}

// finish stops the load and waits for it; it may be called more than once.
func (l *loadGen) finish() {
	l.once.Do(func() {
		close(l.stop)
		l.wg.Wait()
		l.ka.CloseIdleConnections()
		l.fresh.CloseIdleConnections()
	})
}

// progress waits until n more requests than now have succeeded, for up to
// timeout, and reports whether they did.
func (l *loadGen) progress(n int64, timeout time.Duration) bool {
	base := l.ok.Load()
	return pollFor(timeout, func() bool { return l.ok.Load() >= base+n })
}

// check stops the load and fails the test on any failed request and on
// any request the server dropped, even one the client sent again.
func (l *loadGen) check(t *testing.T, what string) {
	t.Helper()
	l.finish()
	ok, failed, refused, dropped := l.ok.Load(), l.failed.Load(), l.refused.Load(), l.retried.Load()
	t.Logf("%s: %d requests answered, %d failed, %d connections refused, %d dropped by the server and resent by the client",
		what, ok, failed, refused, dropped)
	if failed > 0 || refused > 0 || dropped > 0 {
		l.mu.Lock()
		t.Errorf("%s: %d requests failed, %d connections refused, %d dropped by the server (resent by net/http); first failures:\n%s",
			what, failed, refused, dropped, strings.Join(l.errs, "\n"))
		l.mu.Unlock()
	}
	if ok < 100 {
		t.Errorf("%s: only %d requests answered: the load did not run", what, ok)
	}
}

// TestReloadUnderLoad sends 10 SIGHUPs, one after each generation is ready,
// to a master under load: no request fails, no connection is refused, and
// afterwards only the last generation's children are left.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=2")
	s.waitReady(2)
	load := startLoad(t, s.addr)
	if !load.progress(200, 10*time.Second) {
		t.Fatalf("load did not start: %d answered, %d failed", load.ok.Load(), load.failed.Load())
	}
	const reloads = 10
	for gen := 1; gen <= reloads; gen++ {
		s.signal(syscall.SIGHUP)
		if !s.waitGen(reReloadDone, gen, startTimeout) {
			t.Fatalf("reload %d not done within %v; log:\n%s", gen, startTimeout, s.log)
		}
		// Let the load go on across the old generation's drain before the
		// next reload; a stall here is a failure of its own.
		if !load.progress(200, startTimeout) {
			t.Fatalf("no progress of the load after reload %d: %d answered, %d failed", gen, load.ok.Load(), load.failed.Load())
		}
	}
	load.check(t, fmt.Sprintf("%d reloads", reloads))

	last := sortedPids(s.ready(reloads))
	if len(last) != 2 {
		t.Fatalf("generation %d has ready children %v, want 2", reloads, last)
	}
	if got, ok := s.waitChildren(last, 10*time.Second); !ok {
		t.Errorf("master's children %v after %d reloads, want only the last generation's %v", got, reloads, last)
	}
	if left := s.trackedAlive(last); len(left) > 0 {
		t.Errorf("children of earlier generations still alive: %v", left)
	}
	if n := len(parseKids(s.log.snapshot(), reSpawned)); n != 2*(reloads+1) {
		t.Errorf("%d children spawned over %d reloads, want %d", n, reloads, 2*(reloads+1))
	}
}

// TestReloadBadConfig rewrites the config file with a bad value and sends
// SIGHUP: the error names the file and line and the same children go on;
// fixed to workers = 3, the next SIGHUP replaces them with three new ones.
func TestReloadBadConfig(t *testing.T) {
	t.Parallel()
	conf := writeConfig(t, "workers = 2\n")
	s := startServer(t, "-config="+conf)
	before := sortedPids(s.waitReady(2))

	rewrite(t, conf, "# broken on purpose\nworkers = banana\n")
	s.signal(syscall.SIGHUP)
	var rejected string
	ok := s.log.waitFor(startTimeout, s.exited, func(lines []string) bool {
		for _, line := range lines {
			if strings.Contains(line, `msg="reload rejected`) {
				rejected = line
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no rejection logged for a bad config; log:\n%s", s.log)
	}
	if !strings.Contains(rejected, conf+" line 2") || !strings.Contains(rejected, "workers") {
		t.Errorf("rejection %q does not name %s line 2 and the key", rejected, conf)
	}
	for i := range 4 {
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("request %d after the rejected reload: %+v", i, r)
		}
	}
	if got := s.children(); !slices.Equal(got, before) {
		t.Errorf("children after the rejected reload %v, want the same %v", got, before)
	}
	for _, line := range s.log.snapshot() {
		if reReloadBegun.MatchString(line) || reSpawned.MatchString(line) && !strings.Contains(line, "gen=0") {
			t.Errorf("a rejected reload started a generation: %s", line)
		}
	}

	rewrite(t, conf, "workers = 3\n")
	s.signal(syscall.SIGHUP)
	if !s.waitGen(reReloadDone, 1, startTimeout) {
		t.Fatalf("reload with the fixed config not done; log:\n%s", s.log)
	}
	after := s.ready(1)
	if len(after) != 3 || after[0].slot != 0 || after[1].slot != 1 || after[2].slot != 2 {
		t.Fatalf("generation 1 has ready children %v, want slots 0, 1 and 2", after)
	}
	want := sortedPids(after)
	if got, ok := s.waitChildren(want, startTimeout); !ok {
		t.Errorf("children after the reload %v, want the three new %v (old %v gone)", got, want, before)
	}
}

// TestUpgradeUnderLoad runs `-s upgrade` under load: the new master takes
// the pidfile, the old one exits 0 after its drain, and no request fails.
// The new master, a child of the old one adopted by the system once the
// old one exits, is then stopped with `-s stop`.
func TestUpgradeUnderLoad(t *testing.T) {
	t.Parallel()
	pidfile := filepath.Join(t.TempDir(), "procpool.pid")
	s := startServer(t, "-workers=2", "-pidfile="+pidfile)
	old := sortedPids(s.waitReady(2))
	if pid := pidfilePid(pidfile); pid != s.pid {
		t.Fatalf("pidfile holds %d, master is %d", pid, s.pid)
	}
	// The new master is not the test's child: stop it by pid before the
	// server's cleanup checks that no process of it is left. Should the test
	// fail before it learns that pid, the new master is found by the
	// pidfile on its command line.
	adopted := adoptedCleanup(t, s, pidfile)
	load := startLoad(t, s.addr)
	if !load.progress(200, 10*time.Second) {
		t.Fatalf("load did not start: %d answered, %d failed", load.ok.Load(), load.failed.Load())
	}

	if code, stderr := runToExit(t, "-s", "upgrade", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s upgrade exited %d: %s", code, stderr)
	}
	newPid := 0
	ok := pollFor(15*time.Second, func() bool {
		if newPid == 0 {
			if pid := pidfilePid(pidfile); pid != 0 && pid != s.pid {
				if id, err := identify(pid); err == nil {
					newPid, *adopted = pid, id
				}
			}
		}
		return newPid != 0 && s.hasExited()
	})
	if !ok {
		t.Fatalf("upgrade not complete in 15s: pidfile holds %d, old master exited: %v; log:\n%s",
			pidfilePid(pidfile), s.hasExited(), s.log)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("old master exited with %v, want status 0", s.cmd.ProcessState)
	}
	if !adopted.alive() {
		t.Fatalf("new master %d from the pidfile is not alive", newPid)
	}
	// The new master serves on its own.
	if !load.progress(500, 10*time.Second) {
		t.Errorf("no progress of the load after the old master exited")
	}
	load.check(t, "upgrade")

	for _, pid := range old {
		if pidAlive(pid) {
			t.Errorf("old child %d still alive after the old master exited", pid)
		}
	}
	newKids, err := childPids(newPid)
	if err != nil || len(newKids) != 2 {
		t.Errorf("new master %d has children %v (%v), want 2", newPid, newKids, err)
	}
	for _, pid := range newKids {
		s.track(pid) // the server's cleanup checks they are gone
	}

	if code, stderr := runToExit(t, "-s", "stop", "-pidfile", pidfile); code != 0 {
		t.Fatalf("-s stop after the upgrade exited %d: %s", code, stderr)
	}
	if !pollFor(stopTimeout, func() bool { return !adopted.alive() }) {
		t.Fatalf("new master %d still alive after -s stop", newPid)
	}
	if !pollFor(startTimeout, func() bool { return !fileExists(pidfile) }) {
		t.Errorf("pidfile %s left after the new master stopped", pidfile)
	}
}

// TestUpgradeFailed replaces the binary the master was started from with a
// script that exits 1: `-s upgrade` fails, the old master says so and goes
// on serving with the same children, and the pidfile still names it.
func TestUpgradeFailed(t *testing.T) {
	t.Parallel()
	bin, pidfile := installed(t)
	s := startServerWith(t, useBin(bin), "-workers=2", "-pidfile="+pidfile)
	kids := sortedPids(s.waitReady(2))
	failUpgrade(t, s, bin, pidfile)
	if s.hasExited() {
		t.Fatalf("master exited after a failed upgrade: %v", s.cmd.ProcessState)
	}
	if pid := pidfilePid(pidfile); pid != s.pid {
		t.Errorf("pidfile holds %d after a failed upgrade, want the old master %d", pid, s.pid)
	}
	for i := range 4 {
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("request %d after the failed upgrade: %+v", i, r)
		}
	}
	if got := s.children(); !slices.Equal(got, kids) {
		t.Errorf("children after the failed upgrade %v, want the same %v", got, kids)
	}
	// The listening socket is still the old master's alone.
	if l, ok := s.listensAlone(t); !ok {
		t.Errorf("listening sockets on port %d after the failed upgrade: %+v", s.port, l)
	}
}
