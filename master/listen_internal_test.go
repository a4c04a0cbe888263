package master

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The fdpass TCP listener gets TCP_NODELAY, which accepted sockets inherit,
// and -defer-accept rounded to whole seconds (at least one); a reuseport
// master's reserved socket gets neither (its children set their own).
func TestTuneListener(t *testing.T) {
	for _, c := range []struct {
		cfg       Config
		deferSecs int
		nodelay   bool
	}{
		{Config{Mode: ModeFdpass, DeferAccept: 1500 * time.Millisecond}, 2, true},
		{Config{Mode: ModeFdpass, DeferAccept: time.Millisecond}, 1, true},
		{Config{Mode: ModeFdpass}, 0, true},
		{Config{Mode: ModeReuseport, DeferAccept: time.Second}, 0, false},
	} {
		fd, err := Listen("127.0.0.1:0", 16, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := tuneListener(fd, c.cfg); err != nil {
			t.Fatal(err)
		}
		got, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
		nodelay, err2 := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		unix.Close(fd)
		// The kernel keeps the timeout as retransmits and reports back the
		// seconds they cover, which may round up.
		if err != nil || (got == 0) != (c.deferSecs == 0) || got < c.deferSecs {
			t.Errorf("%+v: TCP_DEFER_ACCEPT %d (%v), want %d", c.cfg, got, err, c.deferSecs)
		}
		if err2 != nil || (nodelay != 0) != c.nodelay {
			t.Errorf("%+v: TCP_NODELAY %d (%v), want %v", c.cfg, nodelay, err2, c.nodelay)
		}
	}
}
