package master

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// -defer-accept reaches the fdpass listener, rounded to whole seconds (at
// least one), and nothing else.
func TestDeferAccept(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want int
	}{
		{Config{Mode: ModeFdpass, DeferAccept: 1500 * time.Millisecond}, 2},
		{Config{Mode: ModeFdpass, DeferAccept: time.Millisecond}, 1},
		{Config{Mode: ModeFdpass}, 0},
		{Config{Mode: ModeReuseport, DeferAccept: time.Second}, 0},
	} {
		fd, err := Listen("127.0.0.1:0", 16, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := deferAccept(fd, c.cfg); err != nil {
			t.Fatal(err)
		}
		got, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
		unix.Close(fd)
		// The kernel keeps the timeout as retransmits and reports back the
		// seconds they cover, which may round up.
		if err != nil || (got == 0) != (c.want == 0) || got < c.want {
			t.Errorf("%+v: TCP_DEFER_ACCEPT %d (%v), want %d", c.cfg, got, err, c.want)
		}
	}
}
