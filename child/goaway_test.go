package child

import (
	"strings"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
)

// After CmdGoAway (a stop's shutdown delay) a child answers every request,
// on connections old and new, with Connection: close, and keeps serving.
func TestGoAway(t *testing.T) {
	tc := startChild(t, Config{}, HandlerFunc(helloWorld))
	old := tc.dial(t)
	if r := old.roundTrip(t, "/"); closes(r) {
		t.Fatal("before CmdGoAway: Connection: close")
	}
	tc.send(t, ipc.CmdGoAway)
	tc.send(t, ipc.CmdPing) // answered once the go-away is taken
	if m, ok := tc.recv(t, 5*time.Second); !ok || m.Cmd != ipc.CmdPing {
		t.Fatalf("child answered %v %v, want ping", m, ok)
	}
	if r := old.roundTrip(t, "/"); !closes(r) || string(r.body) != "Hello World" {
		t.Errorf("after CmdGoAway, an open connection: close %v, body %q", closes(r), r.body)
	}
	for i := 0; i < 3; i++ {
		c := tc.dial(t)
		if r := c.roundTrip(t, "/"); !closes(r) || string(r.body) != "Hello World" {
			t.Errorf("after CmdGoAway, a new connection: close %v, body %q", closes(r), r.body)
		}
	}
}

func closes(r *response) bool { return strings.EqualFold(r.get("Connection"), "close") }
