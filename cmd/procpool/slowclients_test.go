package main

// Slow clients (slowloris): thousands of connections that trickle a request
// header a byte a second must neither starve a normal client nor hold a
// child's resources past -header-timeout.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// obsRaiseNofile lifts this test process's soft fd limit to its hard limit,
// and skips the test when even the hard limit is below need.
func obsRaiseNofile(t *testing.T, need uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if rl.Max < need {
		t.Skipf("RLIMIT_NOFILE hard limit is %d; this test needs %d fds (raise it with ulimit -Hn as root)", rl.Max, need)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatalf("setrlimit RLIMIT_NOFILE to %d: %v", rl.Max, err)
		}
	}
}

// obsPercentile is the p-th percentile (0 < p <= 100) of sorted durations.
func obsPercentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// obsLoad makes requests on conns, one goroutine per connection, paced by
// gap, until d has passed or each connection has made limit requests. It
// returns the latencies, sorted, and the first failure.
func obsLoad(conns []*clientConn, d, gap time.Duration, limit int) ([]time.Duration, error) {
	var (
		mu    sync.Mutex
		lats  []time.Duration
		first error
		wg    sync.WaitGroup
	)
	stop := time.Now().Add(d)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			var err error
			for n := 0; n < limit && time.Now().Before(stop); n++ {
				c.SetDeadline(time.Now().Add(ioTimeout))
				start := time.Now()
				var r *response
				r, err = c.roundTrip("GET / HTTP/1.1\r\nHost: normal\r\n\r\n")
				if err == nil && (r.status != 200 || r.body != helloBody || r.close) {
					err = fmt.Errorf("status %d close %v body %q", r.status, r.close, r.body)
				}
				if err != nil {
					err = fmt.Errorf("normal connection %d request %d: %v", i, n, err)
					break
				}
				mine = append(mine, time.Since(start))
				time.Sleep(gap)
			}
			mu.Lock()
			lats = append(lats, mine...)
			if first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lats)
	return lats, first
}

// slowConn is one slow client.
type slowConn struct {
	c      net.Conn
	first  time.Time // just before its first byte went out
	sent   int
	closed atomic.Bool
	end    time.Time // when the read saw the close (or gave up)
	err    error     // what the read ended with
	got    int       // bytes the server sent before closing
}

// TestSlowClients holds 2,000 connections that send a request header one
// byte a second. Each must be closed by the server between -header-timeout
// (3 s) and about a second and a half later (the sweep runs once a second),
// and counted as a timeout; meanwhile a normal keep-alive client is served
// with every request answered, and its latency is measured with and without
// the slow clients.
//
// Not parallel: it is the heaviest test of the package, and the latencies it
// reports mean something only when it runs alone.
func TestSlowClients(t *testing.T) {
	const slow = 2000
	obsRaiseNofile(t, 4200)
	s := startServer(t, "-workers=2", "-header-timeout=3s", "-admin=127.0.0.1:0")
	s.waitReady(2)
	admin := obsAdminAddr(t, s)

	normal := make([]*clientConn, 4)
	for i := range normal {
		normal[i] = s.dial(t)
	}
	const gap, perConn = 2 * time.Millisecond, 5000
	base, err := obsLoad(normal, 1500*time.Millisecond, gap, perConn)
	if err != nil {
		t.Fatalf("without slow clients: %v", err)
	}

	// The slow clients: dial them all, each sending its first byte at once,
	// while the normal client runs.
	header := []byte("GET / HTTP/1.1\r\nHost: slow\r\nUser-Agent: slowloris\r\n\r\n")
	conns := make([]*slowConn, 0, slow)
	var readers sync.WaitGroup
	var loaded []time.Duration
	var loadErr error
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		loaded, loadErr = obsLoad(normal, 5500*time.Millisecond, gap, perConn)
	}()
	dialStart := time.Now()
	var dialErr error
	for i := 0; i < slow && time.Since(dialStart) < 5*time.Second; i++ {
		c, err := net.DialTimeout("tcp", s.addr, ioTimeout)
		if err != nil {
			dialErr = fmt.Errorf("slow connection %d: %v", i, err)
			break
		}
		sc := &slowConn{c: c, first: time.Now()}
		if _, err := c.Write(header[:1]); err != nil {
			c.Close()
			dialErr = fmt.Errorf("slow connection %d: first byte: %v", i, err)
			break
		}
		sc.sent = 1
		conns = append(conns, sc)
		readers.Add(1)
		go func() {
			defer readers.Done()
			// Not closed 7 s after the first byte: the server forgot it.
			sc.c.SetReadDeadline(sc.first.Add(7 * time.Second))
			n, err := io.Copy(io.Discard, sc.c)
			sc.end, sc.got = time.Now(), int(n)
			if err == nil {
				err = io.EOF
			}
			sc.err = err
			sc.closed.Store(true)
		}()
	}
	dialed := time.Since(dialStart)
	t.Cleanup(func() {
		for _, sc := range conns {
			sc.c.Close()
		}
	})

	// One more byte a second on every connection still open, for at most
	// six seconds after the last first byte.
	trickleEnd := time.Now().Add(6 * time.Second)
	tick := time.NewTicker(time.Second)
	for trickle := true; trickle && time.Now().Before(trickleEnd); {
		<-tick.C
		trickle = false
		for _, sc := range conns {
			if sc.closed.Load() || sc.sent >= len(header)-4 { // never the blank line that ends the header
				continue
			}
			trickle = true
			sc.c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := sc.c.Write(header[sc.sent : sc.sent+1]); err == nil {
				sc.sent++
			}
		}
	}
	tick.Stop()
	readers.Wait()
	<-loadDone
	if dialErr != nil {
		t.Fatal(dialErr)
	}
	if loadErr != nil {
		t.Errorf("with slow clients: %v", loadErr)
	}

	// When the server closed them, after their first byte.
	var after []time.Duration
	var early, late, notClosed, sentData int
	for i, sc := range conns {
		switch {
		case !errors.Is(sc.err, io.EOF) && !isReset(sc.err):
			notClosed++
			if notClosed <= 5 {
				t.Errorf("slow connection %d: not closed by the server: %v after %v", i, sc.err, sc.end.Sub(sc.first))
			}
			continue
		case sc.got > 0:
			sentData++
		}
		d := sc.end.Sub(sc.first)
		after = append(after, d)
		switch {
		case d < 3*time.Second:
			early++
		case d > 5*time.Second:
			late++
		}
	}
	slices.Sort(after)
	if len(after) > 0 {
		t.Logf("%d slow connections dialed in %v; closed by the server %v to %v after their first byte (median %v); %d bytes sent at most",
			len(conns), dialed.Round(time.Millisecond), after[0].Round(time.Millisecond), after[len(after)-1].Round(time.Millisecond),
			obsPercentile(after, 50).Round(time.Millisecond), slices.MaxFunc(conns, func(a, b *slowConn) int { return a.sent - b.sent }).sent)
	}
	if early > 0 || late > 0 || notClosed > 0 {
		t.Errorf("of %d slow connections, %d were closed before 3 s, %d after 5 s, %d not at all", len(conns), early, late, notClosed)
	}
	if sentData > 0 {
		t.Logf("%d slow connections received data before the close", sentData)
	}

	// Every one of them counted as a timeout, and none is held any more.
	var st obsStatus
	if !pollFor(5*time.Second, func() bool {
		st = obsGetStatus(t, admin)
		tot := st.totals()
		return tot.timeouts == slow && tot.open == uint64(len(normal))
	}) {
		tot := st.totals()
		t.Errorf("/status: timeouts %d, open %d; want %d, %d", tot.timeouts, tot.open, slow, len(normal))
	}
	for _, c := range st.Children {
		t.Logf("child %d: accepted %d timeouts %d open %d requests %d", c.Pid, c.Accepted, c.Timeouts, c.Open, c.Requests)
	}

	p := func(l []time.Duration, q float64) time.Duration {
		return obsPercentile(l, q).Round(10 * time.Microsecond)
	}
	t.Logf("normal client without slow clients: %d requests, p50 %v p99 %v max %v", len(base), p(base, 50), p(base, 99), p(base, 100))
	t.Logf("normal client with %d slow clients:  %d requests, p50 %v p99 %v max %v", len(conns), len(loaded), p(loaded, 50), p(loaded, 99), p(loaded, 100))
	if len(base) == 0 || len(loaded) == 0 {
		t.Fatalf("the normal client made %d and %d requests", len(base), len(loaded))
	}
	if p99 := obsPercentile(loaded, 99); p99 > 200*time.Millisecond {
		t.Errorf("p99 latency of the normal client with slow clients is %v, want under 200ms", p99)
	}
	if r := s.get(t, "/"); r.status != 200 {
		t.Errorf("GET / after the slow clients: %d", r.status)
	}
}
