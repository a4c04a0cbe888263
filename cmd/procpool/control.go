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

// control is `procpool -s NAME`: find the master through the pidfile and
// send it the signal that NAME stands for.
func control(s *settings, stdout, stderr io.Writer) int {
	if s.signal == "status" {
		return statusTable(s.admin, stdout, stderr)
	}
	sig, _ := master.SignalByName(s.signal)
	pid, err := master.RunningPid(s.pidfile)
	if errors.Is(err, master.ErrNotRunning) {
		fmt.Fprintf(stderr, "procpool: not running (no master holds %s)\n", s.pidfile)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return exitFailure
	}
	if err := unix.Kill(pid, sig); err != nil {
		fmt.Fprintf(stderr, "procpool: signal %s to pid %d: %v\n", s.signal, pid, err)
		return exitFailure
	}
	return exitOK
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
