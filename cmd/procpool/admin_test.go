package main

// Observability, seen from outside: the admin listener's /status (JSON) and
// /metrics (Prometheus text), `procpool -s status`, and the access log.
// Counts are checked exactly against what the test itself sent.
//
// The admin client the other tests use too is in adminclient_test.go.

import (
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mixRequest is one request of the admin test's load and what it must get.
type mixRequest struct {
	raw    string
	status int
	body   string
}

// mix is request i of a load mixing GET /, POST /echo and POST / with
// bodies of known sizes, and 404s.
func mix(i int) mixRequest {
	switch i % 10 {
	case 5, 6, 7:
		body := strings.Repeat(string(rune('a'+i%26)), 1+(i*53)%700)
		return mixRequest{fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: obs\r\nContent-Length: %d\r\n\r\n%s", len(body), body), 200, body}
	case 8:
		body := fmt.Sprintf("post to the root, request %d", i)
		return mixRequest{fmt.Sprintf("POST / HTTP/1.1\r\nHost: obs\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body), 200, body}
	case 9:
		return mixRequest{fmt.Sprintf("GET /missing/%d HTTP/1.1\r\nHost: obs\r\n\r\n", i), 404, "Not Found\n"}
	default:
		return mixRequest{"GET / HTTP/1.1\r\nHost: obs\r\nUser-Agent: obs-test\r\n\r\n", 200, helloBody}
	}
}

// TestAdminStatusAndMetrics makes a known load over fresh keep-alive
// connections and checks that /status, /metrics and `-s status` account for
// it exactly; then a malformed request and a reload.
func TestAdminStatusAndMetrics(t *testing.T) {
	t.Parallel()
	// The stall rule is off: on a loaded machine it may rightly deal around
	// a child that was not scheduled, and this test wants both to serve.
	s := startServer(t, "-workers=2", "-admin=127.0.0.1:0", "-stall=0")
	kids := s.waitReady(2)
	admin := adminAddr(t, s)
	allowed := allowedCPUs(t)

	// Nothing has connected to the children yet.
	if tot := getStatus(t, admin).totals(); tot != (counterTotals{}) {
		t.Fatalf("counters before any request: %+v, want all zero", tot)
	}

	const conns, requests = 7, 300
	cs := make([]*clientConn, conns)
	for i := range cs {
		cs[i] = s.dial(t)
	}
	var sent, want2xx, want4xx int
	plans := make([][]mixRequest, conns)
	for i := range requests {
		r := mix(i)
		plans[i%conns] = append(plans[i%conns], r)
		sent += len(r.raw)
		if r.status == 200 {
			want2xx++
		} else {
			want4xx++
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for j, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k, req := range plans[j] {
				r, err := c.roundTrip(req.raw)
				if err != nil {
					errs <- fmt.Errorf("connection %d request %d: %v", j, k, err)
					return
				}
				if r.status != req.status || r.body != req.body || r.close {
					errs <- fmt.Errorf("connection %d request %d: status %d close %v body %q, want %d %q",
						j, k, r.status, r.close, r.body, req.status, req.body)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	want := counterTotals{accepted: conns, open: conns, requests: requests, bytesIn: uint64(sent),
		r2xx: uint64(want2xx), r4xx: uint64(want4xx)}
	var st statusDoc
	settled := pollFor(5*time.Second, func() bool {
		st = getStatus(t, admin) // which checks the names too
		got := st.totals()
		got.bytesOut = 0
		return got == want
	})
	if !settled {
		got := st.totals()
		got.bytesOut = 0
		t.Errorf("/status totals %+v\nwant            %+v", got, want)
	}
	if st.MasterPid != s.pid || st.Mode != "fdpass" || st.Generation != 0 {
		t.Errorf("/status master_pid %d mode %q generation %d, want %d fdpass 0", st.MasterPid, st.Mode, st.Generation, s.pid)
	}
	if real := s.children(); !slices.Equal(st.pids(), real) {
		t.Errorf("/status lists children %v, the master's children in /proc are %v", st.pids(), real)
	}
	if len(st.Children) != len(kids) {
		t.Fatalf("/status lists %d children, want %d", len(st.Children), len(kids))
	}
	for _, c := range st.Children {
		k := slices.IndexFunc(kids, func(k kidInfo) bool { return k.pid == c.Pid })
		switch {
		case k < 0:
			t.Errorf("child %+v: not a child the master announced (%v)", c, kids)
		case kids[k].slot != c.Slot:
			t.Errorf("child %d: slot %d, the log says %d", c.Pid, c.Slot, kids[k].slot)
		}
		if wantCPU := allowed[c.Slot%len(allowed)]; c.CPU != wantCPU {
			t.Errorf("child %d slot %d: cpu %d, want %d", c.Pid, c.Slot, c.CPU, wantCPU)
		}
		if c.State != "ready" || c.Generation != 0 || c.RSSBytes <= 0 {
			t.Errorf("child %d: state %q generation %d rss_bytes %d, want ready 0 >0", c.Pid, c.State, c.Generation, c.RSSBytes)
		}
		if c.BytesOut == 0 || c.Requests == 0 {
			t.Errorf("child %d: bytes_out %d requests %d: round-robin gave it nothing?", c.Pid, c.BytesOut, c.Requests)
		}
	}
	t.Logf("/status after %d requests on %d connections: %+v", requests, conns, st.totals())

	// /metrics tells the same story.
	samples, body := getMetrics(t, admin)
	check := func(what string, got float64, want uint64) {
		t.Helper()
		if got != float64(want) {
			t.Errorf("/metrics %s = %v, want %d", what, got, want)
		}
	}
	check("sum of procpool_child_requests_total", sumSamples(samples, "procpool_child_requests_total", nil), requests)
	check("sum of procpool_child_accepted_connections_total", sumSamples(samples, "procpool_child_accepted_connections_total", nil), conns)
	check("sum of procpool_child_received_bytes_total", sumSamples(samples, "procpool_child_received_bytes_total", nil), uint64(sent))
	check(`sum of procpool_child_responses_total{class="2xx"}`, sumSamples(samples, "procpool_child_responses_total", map[string]string{"class": "2xx"}), uint64(want2xx))
	check(`sum of procpool_child_responses_total{class="4xx"}`, sumSamples(samples, "procpool_child_responses_total", map[string]string{"class": "4xx"}), uint64(want4xx))
	check("procpool_requests_total", sumSamples(samples, "procpool_requests_total", nil), requests)
	check("procpool_accepted_connections_total", sumSamples(samples, "procpool_accepted_connections_total", nil), conns)
	check("procpool_received_bytes_total", sumSamples(samples, "procpool_received_bytes_total", nil), uint64(sent))
	check("procpool_generation", sumSamples(samples, "procpool_generation", nil), 0)
	check(`procpool_children{state="ready"}`, sumSamples(samples, "procpool_children", map[string]string{"state": "ready"}), 2)
	for _, c := range st.Children {
		pid := map[string]string{"pid": strconv.Itoa(c.Pid), "child": strconv.Itoa(c.Slot), "generation": "0"}
		check(fmt.Sprintf("procpool_child_requests_total%v", pid), sumSamples(samples, "procpool_child_requests_total", pid), c.Requests)
		check(fmt.Sprintf("procpool_child_cpu%v", pid), sumSamples(samples, "procpool_child_cpu", pid), uint64(c.CPU))
	}
	if n := countSamples(samples, "procpool_child_requests_total"); n != 2 {
		t.Errorf("/metrics has %d procpool_child_requests_total series, want 2", n)
	}
	promtool(t, body)

	// procpool -s status: a table with a row per child.
	checkStatusTable(t, admin, s.pid, st)

	// A malformed request: 400, counted as a parse error and a 4xx, not as
	// a request.
	bad := s.dial(t)
	r, err := bad.roundTrip("GET / HTTP/1.1\r\nHost: obs\r\nthis line has no colon\r\n\r\n")
	if err != nil || r.status != 400 {
		t.Fatalf("malformed request: %+v, %v; want 400", r, err)
	}
	want.accepted++
	want.open++
	want.r4xx++
	want.parseErrors++
	want.bytesIn += uint64(len("GET / HTTP/1.1\r\nHost: obs\r\nthis line has no colon\r\n\r\n"))
	if !pollFor(5*time.Second, func() bool {
		st = getStatus(t, admin)
		got := st.totals()
		// The staged close of the bad connection may be over or not.
		got.bytesOut = 0
		if got.open+1 == want.open {
			got.open = want.open
		}
		return got == want
	}) {
		t.Errorf("/status totals after a malformed request %+v\nwant %+v", st.totals(), want)
	}
	samples, _ = getMetrics(t, admin)
	check("procpool_parse_errors_total", sumSamples(samples, "procpool_parse_errors_total", nil), 1)

	// A reload: generation 1, the old children leave /status, and the
	// pool's totals never go backwards. Idle connections are handed to the
	// new generation at once; one connection is in the middle of a request
	// body, so its old child stays draining until the test sends the rest,
	// while /metrics is read in a loop.
	for _, c := range append(cs[1:], bad) {
		c.Close()
	}
	if _, err := io.WriteString(cs[0], "POST /echo HTTP/1.1\r\nHost: obs\r\nContent-Length: 4\r\n\r\nab"); err != nil {
		t.Fatal(err)
	}
	finished := false
	old := st.pids()
	stopMon, monDone := make(chan struct{}), make(chan struct{})
	var monPolls int
	var monErrs []string
	go func() {
		defer close(monDone)
		last := map[string]float64{}
		for monPolls = 0; monPolls < 5000 && len(monErrs) < 5; monPolls++ {
			select {
			case <-stopMon:
				return
			default:
			}
			body, err := adminGet(admin, "/metrics")
			var samples []sample
			if err == nil {
				samples, err = parseMetrics(body)
			}
			if err != nil {
				monErrs = append(monErrs, err.Error())
				return
			}
			for _, name := range []string{"procpool_requests_total", "procpool_accepted_connections_total",
				"procpool_received_bytes_total", "procpool_sent_bytes_total", "procpool_parse_errors_total"} {
				got := sumSamples(samples, name, nil)
				if got < last[name] {
					monErrs = append(monErrs, fmt.Sprintf("%s went backwards during the reload: %v after %v", name, got, last[name]))
				}
				last[name] = max(last[name], got)
			}
		}
	}()
	if err := syscall.Kill(s.pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sawDraining := false
	reloaded := pollFor(10*time.Second, func() bool {
		st = getStatus(t, admin)
		for _, c := range st.Children {
			sawDraining = sawDraining || c.State == "draining" && slices.Contains(old, c.Pid)
		}
		if sawDraining && !finished {
			// The rest of the body: the old child answers, then hands the
			// connection on and exits.
			finished = true
			r, err := cs[0].roundTrip("cd")
			if err != nil || r.body != "abcd" || r.close {
				t.Errorf("request finished across the reload: %+v %v", r, err)
			}
		}
		if st.Generation != 1 || len(st.Children) != 2 {
			return false
		}
		for _, c := range st.Children {
			if c.Generation != 1 || c.State != "ready" || slices.Contains(old, c.Pid) {
				return false
			}
		}
		for _, pid := range old {
			if pidAlive(pid) {
				return false
			}
		}
		return true
	})
	close(stopMon)
	<-monDone
	for _, e := range monErrs {
		t.Error(e)
	}
	if !reloaded {
		t.Fatalf("after SIGHUP: /status generation %d children %+v; old pids %v", st.Generation, st.Children, old)
	}
	if !sawDraining {
		t.Errorf("/status never showed an old child (%v) as draining during the reload", old)
	}
	t.Logf("reload settled; /metrics read %d times meanwhile, totals never went backwards", monPolls)
	if real := s.children(); !slices.Equal(st.pids(), real) {
		t.Errorf("/status lists children %v after the reload, /proc has %v", st.pids(), real)
	}
	samples, body = getMetrics(t, admin)
	check("procpool_generation after the reload", sumSamples(samples, "procpool_generation", nil), 1)
	// One more: the request finished across the reload.
	check("procpool_requests_total after the reload", sumSamples(samples, "procpool_requests_total", nil), requests+1)
	check("procpool_accepted_connections_total after the reload", sumSamples(samples, "procpool_accepted_connections_total", nil), conns+1)
	check("procpool_parse_errors_total after the reload", sumSamples(samples, "procpool_parse_errors_total", nil), 1)
	check("sum of procpool_child_requests_total after the reload", sumSamples(samples, "procpool_child_requests_total", nil), 0)
	promtool(t, body)

	// The new generation counts from zero, and the totals go on from N.
	if r := s.get(t, "/"); r.status != 200 {
		t.Fatalf("GET / after the reload: %d", r.status)
	}
	if !pollFor(5*time.Second, func() bool {
		samples, _ = getMetrics(t, admin)
		return sumSamples(samples, "procpool_requests_total", nil) == requests+2 &&
			sumSamples(samples, "procpool_child_requests_total", map[string]string{"generation": "1"}) == 1
	}) {
		t.Errorf("after one request on generation 1: procpool_requests_total %v, generation 1 children %v; want %d, 1",
			sumSamples(samples, "procpool_requests_total", nil),
			sumSamples(samples, "procpool_child_requests_total", map[string]string{"generation": "1"}), requests+2)
	}
}

// checkStatusTable runs `procpool -s status -admin ADDR` and checks its table
// against st.
func checkStatusTable(t *testing.T, admin string, masterPid int, st statusDoc) {
	t.Helper()
	code, out, stderr := runOutput(t, "-s", "status", "-admin", admin)
	if code != 0 {
		t.Fatalf("procpool -s status -admin %s: exit status %d; stderr:\n%s", admin, code, stderr)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if !strings.HasPrefix(lines[0], fmt.Sprintf("master %d ", masterPid)) || !strings.Contains(lines[0], "generation 0") {
		t.Errorf("procpool -s status: first line %q, want master %d ... generation 0", lines[0], masterPid)
	}
	if len(lines) < 2 || !slices.Equal(strings.Fields(lines[1]), []string{"pid", "slot", "cpu", "state", "open", "requests", "req/s", "rss"}) {
		t.Errorf("procpool -s status: no column header line:\n%s", out)
	}
	rows := map[string][]string{}
	for _, line := range lines[min(2, len(lines)):] {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = f
		}
	}
	if len(rows) != len(st.Children) {
		t.Errorf("procpool -s status: %d rows, want one per child (%d):\n%s", len(rows), len(st.Children), out)
	}
	for _, c := range st.Children {
		f, ok := rows[strconv.Itoa(c.Pid)]
		if !ok {
			t.Errorf("procpool -s status: no row for child %d:\n%s", c.Pid, out)
			continue
		}
		if len(f) != 8 || f[1] != strconv.Itoa(c.Slot) || f[2] != strconv.Itoa(c.CPU) || f[3] != c.State ||
			f[5] != strconv.FormatUint(c.Requests, 10) {
			t.Errorf("procpool -s status: row %q, want slot %d cpu %d state %s requests %d", f, c.Slot, c.CPU, c.State, c.Requests)
		}
	}
	t.Logf("procpool -s status:\n%s", out)
}

// TestAccessLog checks the combined-format access log, its escaping, its
// buffering bound and its reopen on SIGUSR1 after a rotation, with handlers
// inline and in a worker pool (where each worker buffers its own lines).
func TestAccessLog(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inline", "pool"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			args := []string{"-workers=2"}
			if mode == "pool" {
				args = append(args, "-pool=2")
			}
			testAccessLog(t, args...)
		})
	}
}

func testAccessLog(t *testing.T, args ...string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	s := startServer(t, append(args, "-access-log="+path)...)
	s.waitReady(2)

	const agent = `obs "quoted" agent/1.0`
	const escaped = `obs \x22quoted\x22 agent/1.0`
	line := func(target string, status int, size string) *regexp.Regexp {
		return regexp.MustCompile(`^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "GET ` +
			regexp.QuoteMeta(target) + ` HTTP/1\.1" ` + strconv.Itoa(status) + ` ` + size + ` "-" "` + regexp.QuoteMeta(escaped) + `"$`)
	}
	request := func(target string) {
		t.Helper()
		c := s.dial(t)
		defer c.Close()
		r, err := c.roundTrip("GET " + target + " HTTP/1.1\r\nHost: obs\r\nUser-Agent: " + agent + "\r\nConnection: close\r\n\r\n")
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		if target == "/nope" && r.status != 404 || target != "/nope" && r.status != 200 {
			t.Fatalf("GET %s: status %d", target, r.status)
		}
	}
	readLines := func(p string) []string {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	// expect waits until p holds exactly the lines described by want (in
	// any order: each child writes its own), and reports how long it took.
	expect := func(p string, want map[string]*regexp.Regexp) time.Duration {
		t.Helper()
		start := time.Now()
		var got []string
		matched := func() bool {
			got = readLines(p)
			if len(got) != len(want) {
				return false
			}
			used := map[string]bool{}
			for _, l := range got {
				found := false
				for target, re := range want {
					if !used[target] && re.MatchString(l) {
						used[target], found = true, true
						break
					}
				}
				if !found {
					return false
				}
			}
			return true
		}
		// A line waits in its child's (or pool worker's) buffer until the
		// buffer's last write is a second old, checked at least once a
		// second: about two seconds. The wait only bounds a hang.
		if !pollFor(15*time.Second, matched) {
			targets := slices.Sorted(maps.Keys(want))
			t.Fatalf("%s after %v: %d lines\n%s\nwant one combined-format line for each of %v, with User-Agent %s",
				p, time.Since(start).Round(time.Millisecond), len(got), strings.Join(got, "\n"), targets, escaped)
		}
		return time.Since(start)
	}

	first := map[string]*regexp.Regexp{}
	for i := range 6 {
		target := fmt.Sprintf("/?i=%d", i)
		request(target)
		first[target] = line(target, 200, "11")
	}
	request("/nope")
	first["/nope"] = line("/nope", 404, "10")
	took := expect(path, first)
	t.Logf("%d lines in the access log %v after the last response", len(first), took.Round(time.Millisecond))

	// Rotate: rename, SIGUSR1, and every child writes to a new file at the
	// original path.
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(s.pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	kids := s.children()
	var where map[int][]string
	reopened := pollFor(5*time.Second, func() bool {
		where = map[int][]string{}
		ok := true
		for _, pid := range kids {
			fds, err := fdTargets(pid)
			if err != nil {
				t.Fatalf("fds of child %d: %v", pid, err)
			}
			for _, target := range fds {
				if strings.HasPrefix(target, path) {
					where[pid] = append(where[pid], target)
				}
			}
			ok = ok && slices.Equal(where[pid], []string{path})
		}
		return ok
	})
	if !reopened {
		t.Fatalf("after SIGUSR1 the children's access log fds point at %v, want only %s", where, path)
	}
	second := map[string]*regexp.Regexp{}
	for i := range 4 {
		target := fmt.Sprintf("/?j=%d", i)
		request(target)
		second[target] = line(target, 200, "11")
	}
	expect(path, second)
	if got := readLines(rotated); len(got) != len(first) {
		t.Errorf("the rotated file has %d lines after the reopen, want the %d from before:\n%s", len(got), len(first), strings.Join(got, "\n"))
	}
}

// An empty host means IPv4's any address for -admin as for -listen: the
// admin listener logs 0.0.0.0 and answers on IPv4 loopback only.
func TestAdminEmptyHostIsIPv4(t *testing.T) {
	t.Parallel()
	s := startServer(t, "-workers=1", "-admin=:0", "-admin-public")
	addr := adminAddr(t, s)
	if !strings.HasPrefix(addr, "0.0.0.0:") {
		t.Fatalf("-admin :0 listens on %s, want 0.0.0.0:PORT", addr)
	}
	_, port, _ := net.SplitHostPort(addr)
	if _, err := adminGet("127.0.0.1:"+port, "/healthz"); err != nil {
		t.Errorf("admin over IPv4 loopback: %v", err)
	}
	if c, err := net.DialTimeout("tcp", "[::1]:"+port, time.Second); err == nil {
		c.Close()
		t.Errorf("admin %s also answers on [::1]", addr)
	}
}
