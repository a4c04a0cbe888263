package master

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// /status, /metrics and the probes as the master's decisions set them: a
// stalled child shows as stalled with what was taken back from it.
func TestAdminShowsDecisions(t *testing.T) {
	m, _, kids := newFakeMaster(t, 2, Config{})
	if err := m.startAdmin("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.admin.stop)
	kids[1].h.stalled.Store(true)
	kids[1].h.takenBack.Store(3)
	m.publish()
	addr := m.admin.ln.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil || len(st.Children) != 2 {
		t.Fatalf("/status: %d %v %s", code, err, body)
	}
	for _, c := range st.Children {
		want := c.Pid == kids[1].pid
		if c.Stalled != want || (c.TakenBack == 3) != want {
			t.Errorf("child %d: stalled %v taken back %d", c.Pid, c.Stalled, c.TakenBack)
		}
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "procpool_child_stalled{") ||
		!strings.Contains(body, "procpool_child_taken_back_connections_total{") {
		t.Errorf("/metrics: %d, no stall series:\n%s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
}

// An inherited admin listener is kept only for the address asked: the same
// IP and port (port 0: any), or the same Unix path.
func TestSameAddr(t *testing.T) {
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9100}
	unixAddr := &net.UnixAddr{Name: "/run/procpool.sock", Net: "unix"}
	for _, c := range []struct {
		a                net.Addr
		network, address string
		want             bool
	}{
		{tcp, "tcp", "127.0.0.1:9100", true},
		{tcp, "tcp", "127.0.0.1:0", true},
		{tcp, "tcp", "127.0.0.1:9101", false},
		{tcp, "tcp", "127.0.0.2:9100", false},
		{tcp, "tcp", "[::1]:9100", false},
		{tcp, "unix", "/run/procpool.sock", false},
		{unixAddr, "unix", "/run/procpool.sock", true},
		{unixAddr, "unix", "/run/other.sock", false},
		{unixAddr, "tcp", "127.0.0.1:9100", false},
	} {
		if got := sameAddr(c.a, c.network, c.address); got != c.want {
			t.Errorf("sameAddr(%s %s, %s %s) = %v, want %v", c.a.Network(), c.a, c.network, c.address, got, c.want)
		}
	}
}
