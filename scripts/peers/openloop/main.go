// Command openloop is an open-loop HTTP load generator for the stall and
// uneven-load scripts: requests are due at a fixed rate whatever the server
// does, and a request's latency counts from when it was due, not from when
// the client got round to sending it (so a stalled server cannot slow the
// clock that measures it). Each request uses a new connection unless
// -keepalive is set.
//
// Optionally it stops a process with SIGSTOP for a while during the run
// (-stop PID -stop-at 1s -stop-for 2s), to measure what a stalled worker
// costs the clients.
//
// It prints one line: answered/sent, failed, slower than -slow, p50, p99,
// p99.9, max (ms) of the fast requests; with -slow-share, a share of the
// requests goes to -slow-path and is counted apart.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

type result struct {
	lat  time.Duration
	slow bool // a request to -slow-path
	err  error
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "server address")
	rate := flag.Float64("rate", 300, "requests per second")
	dur := flag.Duration("duration", 5*time.Second, "how long requests are sent")
	path := flag.String("path", "/", "path of the ordinary requests")
	slowPath := flag.String("slow-path", "/slow", "path of the expensive requests")
	slowShare := flag.Float64("slow-share", 0, "share of requests sent to -slow-path (0 to 1)")
	threshold := flag.Duration("slow", 100*time.Millisecond, "a request slower than this is counted as slow")
	timeout := flag.Duration("timeout", 10*time.Second, "give up on a request after this long")
	stopPid := flag.Int("stop", 0, "pid to SIGSTOP during the run (0: none)")
	stopAt := flag.Duration("stop-at", time.Second, "when the -stop pid is stopped")
	stopFor := flag.Duration("stop-for", 2*time.Second, "how long it stays stopped")
	label := flag.String("label", "", "printed at the start of the line")
	flag.Parse()

	n := int(*rate * dur.Seconds())
	results := make([]result, n+1)
	var wg sync.WaitGroup
	start := time.Now()
	if *stopPid > 0 {
		go func() {
			time.Sleep(*stopAt)
			syscall.Kill(*stopPid, syscall.SIGSTOP)
			time.Sleep(*stopFor)
			syscall.Kill(*stopPid, syscall.SIGCONT)
		}()
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i <= n; i++ {
		due := start.Add(time.Duration(float64(i) / *rate * float64(time.Second)))
		time.Sleep(time.Until(due))
		p := *path
		slow := *slowShare > 0 && rng.Float64() < *slowShare
		if slow {
			p = *slowPath
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := get(*addr, p, due.Add(*timeout))
			results[i] = result{lat: time.Since(due), slow: slow, err: err}
		}(i)
	}
	wg.Wait()

	var lats []time.Duration
	failed, slowCount, slowReqs := 0, 0, 0
	var firstErr error
	for _, r := range results {
		switch {
		case r.err != nil:
			failed++
			if firstErr == nil {
				firstErr = r.err
			}
		case r.slow:
			slowReqs++
		default:
			lats = append(lats, r.lat)
			if r.lat > *threshold {
				slowCount++
			}
		}
	}
	slices.Sort(lats)
	q := func(p float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		i := min(len(lats)-1, int(p*float64(len(lats))))
		return float64(lats[i].Microseconds()) / 1000
	}
	fmt.Printf("%s\tanswered=%d/%d\tfailed=%d\tslower_than_%v=%d\tp50=%.1fms\tp99=%.1fms\tp999=%.1fms\tmax=%.1fms\texpensive=%d\n",
		*label, len(lats)+slowReqs, n+1, failed, *threshold, slowCount, q(0.50), q(0.99), q(0.999), q(1), slowReqs)
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "first error:", firstErr)
	}
}

// get sends one GET on a new connection and reads the whole response.
func get(addr, path string, deadline time.Time) error {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200")) && !bytes.HasPrefix(line, []byte("HTTP/1.0 200")) {
		return fmt.Errorf("status %q", bytes.TrimSpace(line))
	}
	_, err = io.Copy(io.Discard, r)
	return err
}
