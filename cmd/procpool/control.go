package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/procpool/procpool/master"
	"golang.org/x/sys/unix"
)

// control is `procpool -s NAME`: find the master through the pidfile, send
// it the signal that NAME stands for, and, for stop and quit, wait until it
// has exited; for reload, until it has accepted or rejected the config.
func control(s *settings, stdout, stderr io.Writer) int {
	if s.signal == "status" {
		return statusTable(s.admin, stdout, stderr)
	}
	sig, _ := master.SignalByName(s.signal)
	pid, pidfd, err := findMaster(s.pidfile)
	if errors.Is(err, master.ErrNotRunning) {
		fmt.Fprintf(stderr, "procpool: not running (no master holds %s)\n", s.pidfile)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return exitFailure
	}
	defer unix.Close(pidfd)
	var before master.ReloadOutcome
	if s.signal == "reload" {
		before, _ = master.ReadReloadOutcome(s.pidfile)
	}
	if err := unix.PidfdSendSignal(pidfd, sig, nil, 0); err != nil {
		fmt.Fprintf(stderr, "procpool: signal %s to pid %d: %v\n", s.signal, pid, err)
		return exitFailure
	}
	switch s.signal {
	case "stop", "quit":
		// The master exits once its children have: by -grace, when it
		// kills what is left, or a moment after.
		limit := s.lb.shutdownDelay + s.grace + stopMargin
		if !waitExit(pidfd, limit) {
			fmt.Fprintf(stderr, "procpool: master %d still running %v after %s (give -s the master's -grace to wait longer)\n",
				pid, limit, unix.SignalName(sig))
			return exitFailure
		}
	case "reload":
		o, ok := waitReload(s.pidfile, pid, before, pidfd)
		switch {
		case !ok:
			fmt.Fprintf(stderr, "procpool: master %d recorded no verdict on the reload within %v (a stopping master ignores reloads)\n",
				pid, reloadWait)
			return exitFailure
		case !o.OK:
			fmt.Fprintf(stderr, "procpool: reload rejected: %s\n", o.Reason)
			return exitFailure
		}
	}
	return exitOK
}

// How long -s waits beyond -grace for a stop, and for a reload's verdict.
const (
	stopMargin = 5 * time.Second
	reloadWait = 10 * time.Second
)

// findMaster reads the master's pid from the pidfile and opens a pidfd on
// it, checking afterwards that the pidfile still names it, so the signal
// cannot reach another process that took over the pid.
func findMaster(pidfile string) (int, int, error) {
	for try := 0; ; try++ {
		if try == 10 {
			return 0, -1, fmt.Errorf("pidfile %s: the pid in it keeps changing", pidfile)
		}
		pid, err := master.RunningPid(pidfile)
		if err != nil {
			return 0, -1, err
		}
		pidfd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // it exited just now: look again
		}
		if err != nil {
			return 0, -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
		}
		if again, err := master.RunningPid(pidfile); err == nil && again == pid {
			return pid, pidfd, nil
		}
		unix.Close(pidfd)
	}
}

// waitExit waits until the process behind pidfd has exited.
func waitExit(pidfd int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		left := time.Until(deadline)
		if left < 0 {
			return false
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// waitReload waits for the reload file to record a verdict of master pid
// newer than before; it gives up early if the master exits.
func waitReload(pidfile string, pid int, before master.ReloadOutcome, pidfd int) (master.ReloadOutcome, bool) {
	deadline := time.Now().Add(reloadWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		o, err := master.ReadReloadOutcome(pidfile)
		if err == nil && o.Pid == pid && (before.Pid != pid || o.Seq > before.Seq) {
			return o, true
		}
		if time.Now().After(deadline) || waitExit(pidfd, delay) {
			return o, false
		}
	}
}

// statusTable is `procpool -s status`: the per-child table, from /status.
func statusTable(admin string, stdout, stderr io.Writer) int {
	client, url := &http.Client{Timeout: 5 * time.Second}, "http://"+admin+"/status"
	if path, ok := strings.CutPrefix(admin, "unix:"); ok {
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}
		url = "http://admin/status"
	}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "procpool: not running, or no admin listener at %s: %v\n", admin, err)
		return exitFailure
	}
	defer resp.Body.Close()
	var st master.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		fmt.Fprintf(stderr, "procpool: %s: %v\n", url, err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "master %d  mode %s  generation %d  up %s\n", st.MasterPid, st.Mode, st.Generation,
		(time.Duration(st.Uptime) * time.Second).Round(time.Second))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pid\tslot\tcpu\tstate\topen\trequests\treq/s\trss\t")
	for _, c := range st.Children {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%d\t%.0f\t%.1fM\t\n", c.Pid, c.Slot, c.CPU, c.State, c.Open,
			c.Requests, c.ReqPerSec, float64(c.RSSBytes)/(1<<20))
	}
	tw.Flush()
	return exitOK
}
