package child

import (
	"sync"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
)

// startPoolChild runs a child with worker goroutines. Cleanup releases any
// handler still blocked in /block first, so that Run can return.
func startPoolChild(t *testing.T, workers int) (*testChild, *testRoutes) {
	t.Helper()
	h := newTestRoutes()
	tc := startChild(t, Config{Pool: workers}, h)
	t.Cleanup(h.unblock) // runs before the child's cleanup, which waits for the workers
	return tc, h
}

func waitEntered(t *testing.T, h *testRoutes) {
	t.Helper()
	select {
	case <-h.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("handler never reached /block")
	}
}

// While a worker is stuck in a handler, the loop and the other workers go
// on serving the child's other connections.
func TestPoolBlockedHandlerDoesNotStall(t *testing.T) {
	tc, h := startPoolChild(t, 4)
	stuck := tc.dial(t)
	stuck.send(t, get("/block"))
	waitEntered(t, h)

	var others []*client
	for i := 0; i < 10; i++ {
		others = append(others, tc.dial(t))
	}
	deadline := time.Now().Add(5 * time.Second)
	errs := make(chan string, len(others))
	var wg sync.WaitGroup
	for i, c := range others {
		c.SetDeadline(deadline)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 5; j++ {
				target := "/c" + itoa(i) + "/r" + itoa(j)
				if _, err := c.Write([]byte(get(target))); err != nil {
					errs <- err.Error()
					return
				}
				r, err := readResponse(c.br, false)
				if err != nil || string(r.body) != target {
					errs <- target + ": " + errString(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("while a handler blocks: %s", e)
	}

	h.unblock()
	if r := stuck.read(t); r.status != 200 || string(r.body) != "released" {
		t.Fatalf("blocked request: status %d body %q", r.status, r.body)
	}
	if r := stuck.roundTrip(t, "/again"); string(r.body) != "/again" {
		t.Fatalf("blocked connection afterwards: %q", r.body)
	}
}

func errString(err error) string {
	if err == nil {
		return "wrong body"
	}
	return err.Error()
}

func TestPoolPipelined100(t *testing.T) {
	tc, _ := startPoolChild(t, 4)
	testSocketPipelined100(t, tc)
}

// More connections than workers, all busy at once: the backlog hands each
// one to a worker as soon as one is free.
func TestPoolBacklog(t *testing.T) {
	tc, _ := startPoolChild(t, 2)
	var clients []*client
	for i := 0; i < 20; i++ {
		clients = append(clients, tc.dial(t))
	}
	for i, c := range clients {
		c.send(t, string(pipeline(numberedTargets("/c"+itoa(i)+"/", 10)...)))
	}
	for i, c := range clients {
		var all []*response
		for j := 0; j < 10; j++ {
			all = append(all, c.read(t))
		}
		checkInOrder(t, all, numberedTargets("/c"+itoa(i)+"/", 10))
	}
}

// A drain that arrives while a worker runs a handler still marks that
// response Connection: close, and Run returns nil once it is out.
func TestPoolDrainDuringHandler(t *testing.T) {
	tc, h := startPoolChild(t, 2)
	busy := tc.dial(t)
	busy.send(t, get("/block"))
	waitEntered(t, h)
	tc.send(t, ipc.CmdDrain)
	expectEOF(t, "connection passed after the drain", tc.dial(t))

	h.unblock()
	r := busy.read(t)
	if r.status != 200 || string(r.body) != "released" || r.get("Connection") != "close" {
		t.Fatalf("request in progress: status %d body %q Connection %q", r.status, r.body, r.get("Connection"))
	}
	expectEOF(t, "drained connection", busy)
	if err := tc.wait(t); err != nil {
		t.Fatalf("Run after a drain: %v, want nil", err)
	}
}
