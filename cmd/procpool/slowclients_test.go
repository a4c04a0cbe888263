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

// raiseNofile lifts this test process's soft fd limit to its hard limit,
// and skips the test when even the hard limit is below need.
func raiseNofile(t *testing.T, need uint64) {
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

// percentile is the p-th percentile (0 < p <= 100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// keepAliveLoad makes requests on conns, one goroutine per connection, paced by
// gap, until stop is closed or each connection has made limit requests. It
// returns how many requests were answered and the first failure.
func keepAliveLoad(conns []*clientConn, stop <-chan struct{}, gap time.Duration, limit int) (int, error) {
	var (
		mu    sync.Mutex
		total int
		first error
		wg    sync.WaitGroup
	)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			var err error
		loop:
			for ; n < limit; n++ {
				select {
				case <-stop:
					break loop
				default:
				}
				c.SetDeadline(time.Now().Add(ioTimeout))
				var r *response
				r, err = c.roundTrip("GET / HTTP/1.1\r\nHost: normal\r\n\r\n")
				if err == nil && (r.status != 200 || r.body != helloBody || r.close) {
					err = fmt.Errorf("status %d close %v body %q", r.status, r.close, r.body)
				}
				if err != nil {
					err = fmt.Errorf("normal connection %d request %d: %v", i, n, err)
					break
				}
				time.Sleep(gap)
			}
			mu.Lock()
			total += n
			if first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total, first
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

// TestSlowClients opens up to 2,000 connections (as many as it can in 5 s)
// that send a request header one byte a second. Each must be closed by the
// server, not before -header-timeout (3 s) has passed since its first byte,
// and counted as a timeout; meanwhile normal keep-alive clients are served,
// every request answered.
//
// Not parallel: it is the heaviest test of the package.
func TestSlowClients(t *testing.T) {
	const (
		slow          = 2000
		headerTimeout = 3 * time.Second
		// A slow connection not closed this long after its first byte was
		// forgotten by the server. Only a bound on a hang: the sweep runs
		// once a second.
		forgotten = headerTimeout + 15*time.Second
	)
	raiseNofile(t, 4200)
	s := startServer(t, "-workers=2", "-header-timeout="+headerTimeout.String(), "-admin=127.0.0.1:0")
	s.waitReady(2)
	admin := adminAddr(t, s)

	normal := make([]*clientConn, 4)
	for i := range normal {
		normal[i] = s.dial(t)
	}
	const gap, perConn = 2 * time.Millisecond, 5000

	// The slow clients: dial them all, each sending its first byte at once,
	// while the normal clients run.
	header := []byte("GET / HTTP/1.1\r\nHost: slow\r\nUser-Agent: slowloris\r\n\r\n")
	conns := make([]*slowConn, 0, slow)
	var readers sync.WaitGroup
	var served int
	var loadErr error
	loadStop, loadDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(loadDone)
		served, loadErr = keepAliveLoad(normal, loadStop, gap, perConn)
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
			sc.c.SetReadDeadline(sc.first.Add(forgotten))
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

	// One more byte a second on every connection still open, until all are
	// closed (never the blank line that ends the header).
	trickleEnd := time.Now().Add(forgotten)
	tick := time.NewTicker(time.Second)
	for trickle := true; trickle && time.Now().Before(trickleEnd); {
		<-tick.C
		trickle = false
		for _, sc := range conns {
			if sc.closed.Load() || sc.sent >= len(header)-4 {
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
	close(loadStop)
	<-loadDone
	if dialErr != nil {
		t.Fatal(dialErr)
	}
	if loadErr != nil {
		t.Errorf("normal clients beside the slow ones: %v", loadErr)
	}
	if served == 0 {
		t.Errorf("the normal clients made no request beside the slow ones")
	}
	if len(conns) < 100 {
		t.Fatalf("only %d slow connections opened in %v: the test shows nothing", len(conns), dialed.Round(time.Millisecond))
	}

	// When the server closed them, after their first byte.
	var after []time.Duration
	var early, notClosed, sentData int
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
		// A few milliseconds of slack: the child keeps deadlines in wall
		// time, the test measures in monotonic time.
		if d < headerTimeout-5*time.Millisecond {
			early++
		}
	}
	slices.Sort(after)
	if len(after) > 0 {
		t.Logf("%d slow connections dialed in %v; closed by the server %v to %v after their first byte (median %v); %d bytes sent at most",
			len(conns), dialed.Round(time.Millisecond), after[0].Round(time.Millisecond), after[len(after)-1].Round(time.Millisecond),
			percentile(after, 50).Round(time.Millisecond), slices.MaxFunc(conns, func(a, b *slowConn) int { return a.sent - b.sent }).sent)
	}
	if early > 0 || notClosed > 0 {
		t.Errorf("of %d slow connections, %d were closed before the header timeout of %v, %d not at all", len(conns), early, headerTimeout, notClosed)
	}
	if sentData > 0 {
		t.Logf("%d slow connections received data before the close", sentData)
	}
	t.Logf("normal clients: %d requests answered beside the slow clients", served)

	// Every one of them counted as a timeout, and none is held any more.
	var st statusDoc
	if !pollFor(startTimeout, func() bool {
		st = getStatus(t, admin)
		tot := st.totals()
		return tot.timeouts == uint64(len(conns)) && tot.open == uint64(len(normal))
	}) {
		tot := st.totals()
		t.Errorf("/status: timeouts %d, open %d; want %d (the slow connections opened), %d", tot.timeouts, tot.open, len(conns), len(normal))
	}
	for _, c := range st.Children {
		t.Logf("child %d: accepted %d timeouts %d open %d requests %d", c.Pid, c.Accepted, c.Timeouts, c.Open, c.Requests)
	}
	if r := s.get(t, "/"); r.status != 200 {
		t.Errorf("GET / after the slow clients: %d", r.status)
	}
}
