package child

import (
	"strings"
	"testing"
	"time"
)

// TestLoopTrickledRequests sends pipelined requests in fragments of every
// size from one byte up, each fragment its own read in the child: parsing
// resumes where it stopped, so the answers must be exactly those of the
// requests sent whole.
func TestLoopTrickledRequests(t *testing.T) {
	tc := startChild(t, Config{}, newTestRoutes())
	reqs := "GET /one HTTP/1.1\r\nHost: x\r\nX-Long: " + strings.Repeat("v", 300) + "\r\n\r\n" +
		"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, size := range []int{1, 2, 3, 7, 64} {
		c := tc.dial(t)
		for i := 0; i < len(reqs); i += size {
			c.send(t, reqs[i:min(i+size, len(reqs))])
			if size < 4 && i%40 == 0 {
				time.Sleep(time.Millisecond) // let the child read mid-line
			}
		}
		for _, want := range []string{"/one", "/two", "/three"} {
			r := c.read(t)
			if r.status != 200 || string(r.body) != want {
				t.Fatalf("fragments of %d: got %d %q, want 200 %q", size, r.status, r.body, want)
			}
		}
	}
	// A malformed line is still answered as soon as it is complete.
	c := tc.dial(t)
	for _, b := range []byte("GET /x HTTP/1.1\r\nBad Header: y\r\n") {
		c.send(t, string(b))
	}
	if r := c.read(t); r.status != 400 {
		t.Fatalf("malformed header sent byte by byte: status %d, want 400 before the block ends", r.status)
	}
}
