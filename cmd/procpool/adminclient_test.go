package main

// The admin listener as the tests use it: where the master says it listens,
// GET with a status, and the /status document decoded.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"testing"
	"time"
)

// statusDoc is the /status document as a client reads it: the names are the
// wire contract, so they are spelled out here rather than taken from the
// master package.
type statusDoc struct {
	MasterPid  int        `json:"master_pid"`
	Mode       string     `json:"mode"`
	Uptime     float64    `json:"uptime_seconds"`
	Generation int        `json:"generation"`
	Children   []childDoc `json:"children"`
}

type childDoc struct {
	Pid         int               `json:"pid"`
	Slot        int               `json:"slot"`
	Generation  int               `json:"generation"`
	CPU         int               `json:"cpu"`
	State       string            `json:"state"`
	RSSBytes    int64             `json:"rss_bytes"`
	Accepted    uint64            `json:"accepted"`
	Open        uint64            `json:"open"`
	Requests    uint64            `json:"requests"`
	BytesIn     uint64            `json:"bytes_in"`
	BytesOut    uint64            `json:"bytes_out"`
	Responses   map[string]uint64 `json:"responses"`
	ParseErrors uint64            `json:"parse_errors"`
	Timeouts    uint64            `json:"timeouts"`
	// What the master knows of the child's progress.
	Backlog       uint64  `json:"backlog"`
	Stalled       bool    `json:"stalled"`
	SinceProgress float64 `json:"since_progress_seconds"`
	TakenBack     uint64  `json:"taken_back"`
	HandedBack    uint64  `json:"handed_back"`
	Recycle       string  `json:"recycle"`
	Replaces      string  `json:"replaces"`
	WatchdogKills uint64  `json:"watchdog_kills"`
	InFlight      int64   `json:"in_flight"`
	Request       *struct {
		Method string  `json:"method"`
		Path   string  `json:"path"`
		Age    float64 `json:"age_seconds"`
		Client string  `json:"client"`
	} `json:"request"`
}

// counterTotals are the children's counters summed.
type counterTotals struct {
	accepted, open, requests, bytesIn, bytesOut uint64
	r2xx, r4xx, r5xx, parseErrors, timeouts     uint64
}

func (st statusDoc) totals() counterTotals {
	var t counterTotals
	for _, c := range st.Children {
		t.accepted += c.Accepted
		t.open += c.Open
		t.requests += c.Requests
		t.bytesIn += c.BytesIn
		t.bytesOut += c.BytesOut
		t.r2xx += c.Responses["2xx"]
		t.r4xx += c.Responses["4xx"]
		t.r5xx += c.Responses["5xx"]
		t.parseErrors += c.ParseErrors
		t.timeouts += c.Timeouts
	}
	return t
}

func (st statusDoc) pids() []int {
	var pids []int
	for _, c := range st.Children {
		pids = append(pids, c.Pid)
	}
	slices.Sort(pids)
	return pids
}

var reAdmin = regexp.MustCompile(`msg="admin listening" addr=(\S+)`)

// adminAddr is the admin address the master logged (it logs it before
// "master started", which startServer waits for).
func adminAddr(t *testing.T, s *server) string {
	t.Helper()
	for _, line := range s.log.snapshot() {
		if m := reAdmin.FindStringSubmatch(line); m != nil {
			return m[1]
		}
	}
	t.Fatalf("master %d did not log its admin address; log:\n%s", s.pid, s.log)
	return ""
}

// adminClient talks to admin listeners without keeping connections open in
// the master between calls.
var adminClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// adminGet is the body of GET path on an admin listener; any status but
// 200 is an error.
func adminGet(addr, path string) (string, error) {
	code, body, err := adminStatus(addr, path)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET %s: status %d: %s", path, code, body)
	}
	return body, err
}

// fetchStatus fetches and decodes /status.
func fetchStatus(addr string) (statusDoc, error) {
	var st statusDoc
	body, err := adminGet(addr, "/status")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return st, fmt.Errorf("/status is not the JSON document: %v\n%s", err, body)
	}
	return st, nil
}

// getStatus is fetchStatus for a test that cannot go on without it.
func getStatus(t *testing.T, addr string) statusDoc {
	t.Helper()
	st, err := fetchStatus(addr)
	if err != nil {
		t.Fatalf("admin %s: %v", addr, err)
	}
	return st
}

// adminStatus is the status code of GET path on an admin listener.
func adminStatus(addr, path string) (int, string, error) {
	resp, err := adminClient.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitAdminStatus polls GET path until it answers want.
func waitAdminStatus(t *testing.T, addr, path string, want int) {
	t.Helper()
	var got int
	var err error
	if !pollFor(ioTimeout, func() bool { got, _, err = adminStatus(addr, path); return got == want }) {
		t.Fatalf("GET %s on the admin listener: %d (%v), want %d", path, got, err, want)
	}
}
