package ipc_test

import (
	"net/netip"
	"testing"

	"github.com/procpool/procpool/ipc"
)

// The request a child publishes carries its client when the child knows it
// (from a PROXY header or its own lookup); /status and the watchdog's log
// line read it back.
func TestCellClient(t *testing.T) {
	var c ipc.Cell
	if got := c.CurrentClient(); got.IsValid() {
		t.Fatalf("idle cell: client %v", got)
	}
	for _, client := range []string{"198.51.100.7:40000", "[2001:db8::9]:443", "127.0.0.1:0"} {
		want := netip.MustParseAddrPort(client)
		claimed := c.BeginFrom(1, []byte("GET"), []byte("/x"), want, false)
		if got := c.CurrentClient(); !claimed || got != want {
			t.Errorf("BeginFrom %v: client %v (claimed %v)", want, got, claimed)
		}
		c.End(claimed, false)
		if got := c.CurrentClient(); got.IsValid() {
			t.Errorf("after End: client %v", got)
		}
	}
	claimed := c.Begin(1, []byte("GET"), []byte("/y"), false)
	if got := c.CurrentClient(); got.IsValid() {
		t.Errorf("Begin without a client after one with: client %v", got)
	}
	c.End(claimed, false)
	if allocs := testing.AllocsPerRun(100, func() {
		c.End(c.BeginFrom(1, []byte("GET"), []byte("/z"), netip.MustParseAddrPort("192.0.2.1:80"), false), false)
	}); allocs != 0 {
		t.Errorf("BeginFrom allocates %v times", allocs)
	}
}
