package main

// The admin listener as the tests use it: where the master says it listens,
// GET with a status, the /status document decoded and its names checked,
// and /metrics parsed and checked by promtool.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procpool/procpool/master"
)

// statusDoc is the /status document, decoded into the type the master
// encodes it from. The names on the wire are the contract that scripts and
// dashboards read, so checkStatusNames spells them out itself.
type statusDoc master.Status

// The /status names, as the README documents them: a rename fails here.
// Names with omitempty are in the second list of each, and are checked
// only in documents that have them. (The values are decoded into the
// master's own types, so their types on the wire are not checked.)
var (
	statusNames = [2][]string{{"children", "generation", "master_pid", "mode", "uptime_seconds"}}
	childNames  = [2][]string{{"accepted", "backlog", "bytes_in", "bytes_out", "cpu", "generation",
		"handed_back", "in_flight", "open", "parse_errors", "pid", "req_per_sec", "requests",
		"responses", "rss_bytes", "since_progress_seconds", "slot", "stalled", "started", "state",
		"taken_back", "timeouts", "watchdog_kills"}, {"recycle", "replaces", "request"}}
	requestNames = [2][]string{{"age_seconds", "method", "path"}, {"client"}}
)

// checkStatusNames checks that a /status body uses exactly the documented
// names: every name that is always there, and nothing undocumented.
func checkStatusNames(t *testing.T, body string) {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/status is not JSON: %v\n%s", err, body)
	}
	// Names do not change from one document to the next: the first wrong
	// one ends the test (getStatus runs inside polls).
	bad := badNames(nil, "/status", doc, statusNames)
	children, _ := doc["children"].([]any)
	for _, c := range children {
		c, _ := c.(map[string]any)
		bad = badNames(bad, "/status child", c, childNames)
		if r, ok := c["request"].(map[string]any); ok {
			bad = badNames(bad, "/status request", r, requestNames)
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%s\n%s", strings.Join(bad, "\n"), body)
	}
}

// badNames appends to bad what is wrong with obj's names.
func badNames(bad []string, what string, obj map[string]any, names [2][]string) []string {
	for _, n := range names[0] {
		if _, ok := obj[n]; !ok {
			bad = append(bad, fmt.Sprintf("%s lacks %q", what, n))
		}
	}
	for n := range obj {
		if !slices.Contains(names[0], n) && !slices.Contains(names[1], n) {
			bad = append(bad, fmt.Sprintf("%s has %q, which the test does not know: document it and add it here", what, n))
		}
	}
	return bad
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

// fetchStatus fetches /status, and decodes it when it can.
func fetchStatus(addr string) (string, statusDoc, error) {
	var st statusDoc
	body, err := adminGet(addr, "/status")
	if err != nil {
		return body, st, err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return body, st, fmt.Errorf("/status is not the JSON document: %v\n%s", err, body)
	}
	return body, st, nil
}

// getStatus is fetchStatus for a test that cannot go on without it; it
// checks the document's names too (checkStatusNames), so that the names
// sent only now and then are checked wherever a test brings them about.
func getStatus(t *testing.T, addr string) statusDoc {
	t.Helper()
	body, st, err := fetchStatus(addr)
	if err != nil {
		t.Fatalf("admin %s: %v", addr, err)
	}
	checkStatusNames(t, body)
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

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	reSample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	reLabel  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// parseMetrics reads the samples of a /metrics body.
func parseMetrics(body string) ([]sample, error) {
	var out []sample
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := reSample.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("/metrics line %q is not a sample", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics line %q: value: %v", line, err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, l := range reLabel.FindAllStringSubmatch(m[2], -1) {
			s.labels[l[1]] = l[2]
		}
		out = append(out, s)
	}
	return out, nil
}

// getMetrics fetches and parses /metrics, and returns the body too.
func getMetrics(t *testing.T, addr string) ([]sample, string) {
	t.Helper()
	body, err := adminGet(addr, "/metrics")
	if err != nil {
		t.Fatalf("admin %s: %v", addr, err)
	}
	samples, err := parseMetrics(body)
	if err != nil {
		t.Fatalf("admin %s: %v", addr, err)
	}
	return samples, body
}

// sumSamples sums the samples of name whose labels include match.
func sumSamples(samples []sample, name string, match map[string]string) float64 {
	var sum float64
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range match {
			ok = ok && s.labels[k] == v
		}
		if ok {
			sum += s.value
		}
	}
	return sum
}

// countSamples is how many samples of name there are.
func countSamples(samples []sample, name string) int {
	n := 0
	for _, s := range samples {
		if s.name == name {
			n++
		}
	}
	return n
}

// promtool runs `promtool check metrics` on body: it must exit 0 and
// print nothing (no lint findings). A machine without promtool fails the
// test: CI installs it (Debian's prometheus package, see .ci/run).
func promtool(t *testing.T, body string) {
	t.Helper()
	path := debianTool(t, "promtool", "/usr/bin", "prometheus")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v; output:\n%s\nbody:\n%s", err, out, body)
	}
}
