package master

import (
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/procpool/procpool/ipc"
)

// serveMetrics writes the Prometheus text exposition format (version 0.0.4).
// Every child series carries child (its slot), pid and generation labels, so
// an old and a new child of the same slot during a reload stay distinct.
func (a *admin) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	st := a.status()
	v := a.view.Load()

	gauge(w, "procpool_uptime_seconds", "Seconds since the master started.")
	fmt.Fprintf(w, "procpool_uptime_seconds %g\n", st.Uptime)
	gauge(w, "procpool_generation", "Generation of children, one more at each reload.")
	fmt.Fprintf(w, "procpool_generation %d\n", st.Generation)
	gauge(w, "procpool_children", "Child processes by state.")
	for _, state := range []string{"starting", "ready", "draining"} {
		n := 0
		for _, c := range st.Children {
			if c.State == state {
				n++
			}
		}
		fmt.Fprintf(w, "procpool_children{state=%q} %d\n", state, n)
	}

	type family struct {
		name, help, kind string
		value            func(c *ChildStatus) string
	}
	u := func(x uint64) string { return strconv.FormatUint(x, 10) }
	b := func(x bool) string {
		if x {
			return "1"
		}
		return "0"
	}
	families := []family{
		{"procpool_child_accepted_connections_total", "Connections the child took.", "counter", func(c *ChildStatus) string { return u(c.Accepted) }},
		{"procpool_child_open_connections", "Connections the child holds now.", "gauge", func(c *ChildStatus) string { return u(c.Open) }},
		{"procpool_child_requests_total", "Requests the child answered.", "counter", func(c *ChildStatus) string { return u(c.Requests) }},
		{"procpool_child_received_bytes_total", "Bytes the child read from clients.", "counter", func(c *ChildStatus) string { return u(c.BytesIn) }},
		{"procpool_child_sent_bytes_total", "Bytes the child wrote to clients.", "counter", func(c *ChildStatus) string { return u(c.BytesOut) }},
		{"procpool_child_parse_errors_total", "Malformed requests the child rejected.", "counter", func(c *ChildStatus) string { return u(c.ParseErrors) }},
		{"procpool_child_timeouts_total", "Connections the child closed on a timeout.", "counter", func(c *ChildStatus) string { return u(c.Timeouts) }},
		{"procpool_child_resident_memory_bytes", "Resident set size of the child.", "gauge", func(c *ChildStatus) string { return strconv.FormatInt(c.RSSBytes, 10) }},
		{"procpool_child_cpu", "CPU the child is pinned to (-1: not pinned).", "gauge", func(c *ChildStatus) string { return strconv.Itoa(c.CPU) }},
		{"procpool_child_backlog_connections", "Connections waiting in the child's channel.", "gauge", func(c *ChildStatus) string { return u(c.Backlog) }},
		{"procpool_child_stalled", "1 while the child has a backlog and shows no progress for -stall.", "gauge", func(c *ChildStatus) string { return b(c.Stalled) }},
		{"procpool_child_seconds_since_progress", "Seconds since the child last showed progress while it owed some (0: owes nothing).", "gauge", func(c *ChildStatus) string { return strconv.FormatFloat(c.SinceProgress, 'g', -1, 64) }},
		{"procpool_child_handed_back_connections_total", "Connections the retired child handed back.", "counter", func(c *ChildStatus) string { return u(c.HandedBack) }},
		{"procpool_child_taken_back_connections_total", "Connections taken back out of the child's channel and dealt to others.", "counter", func(c *ChildStatus) string { return u(c.TakenBack) }},
		{"procpool_child_watchdog_kills_total", "Children of this slot the watchdog killed.", "counter", func(c *ChildStatus) string { return u(c.WatchdogKills) }},
		{"procpool_child_in_flight_requests", "Requests in a handler of the child now.", "gauge", func(c *ChildStatus) string { return strconv.FormatInt(c.InFlight, 10) }},
	}
	for _, f := range families {
		header(w, f.name, f.help, f.kind)
		for i := range st.Children {
			c := &st.Children[i]
			fmt.Fprintf(w, "%s{%s} %s\n", f.name, labels(c), f.value(c))
		}
	}
	header(w, "procpool_child_responses_total", "Responses the child sent, by status class.", "counter")
	for i := range st.Children {
		c := &st.Children[i]
		for class := 1; class <= 5; class++ {
			key := strconv.Itoa(class) + "xx"
			fmt.Fprintf(w, "procpool_child_responses_total{%s,class=%q} %d\n", labels(c), key, c.Responses[key])
		}
	}

	// Children that are gone keep counting in the totals, so these never
	// go backwards across reloads and respawns.
	tot := v.retired
	for _, c := range v.children {
		tot.Add(a.stats.Cell(c.cell).Load())
	}
	writeTotals(w, tot)
}

func writeTotals(w io.Writer, t ipc.Snapshot) {
	for _, f := range []struct {
		name, help string
		v          uint64
	}{
		// A connection handed back at a reload is taken again by its next
		// child; the server accepted it once.
		{"procpool_accepted_connections_total", "Connections accepted, by all children past and present.", t.Fresh},
		{"procpool_handed_back_connections_total", "Keep-alive connections retired children handed back to be served on.", t.HandedBack},
		{"procpool_requests_total", "Requests answered by all children, past and present.", t.Requests},
		{"procpool_received_bytes_total", "Bytes read by all children, past and present.", t.BytesIn},
		{"procpool_sent_bytes_total", "Bytes written by all children, past and present.", t.BytesOut},
		{"procpool_parse_errors_total", "Malformed requests rejected by all children, past and present.", t.ParseErrors},
		{"procpool_timeouts_total", "Timeouts in all children, past and present.", t.Timeouts},
	} {
		header(w, f.name, f.help, "counter")
		fmt.Fprintf(w, "%s %d\n", f.name, f.v)
	}
}

func labels(c *ChildStatus) string {
	return fmt.Sprintf("child=\"%d\",pid=\"%d\",generation=\"%d\"", c.Slot, c.Pid, c.Generation)
}

func gauge(w io.Writer, name, help string) { header(w, name, help, "gauge") }

func header(w io.Writer, name, help, kind string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}
