package ipc_test

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// helperEnv names the helper program the test binary runs instead of its
// tests when it is re-executed as a child process (see passfd_test.go).
const helperEnv = "PROCPOOL_IPC_HELPER"

var helpers = map[string]func() int{
	"echofds": echoFdsHelper,
}

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h())
	}
	os.Exit(m.Run())
}

// fdSet is a snapshot of the process's open descriptors, each with what
// /proc says it refers to.
type fdSet map[int]string

var warmPoller sync.Once

// openFds lists /proc/self/fd. The directory's own descriptor is closed
// again before the links are read, so it never shows. The first call makes
// the runtime open its network poller, which stays open for good, so that
// it cannot appear between two snapshots.
func openFds(t *testing.T) fdSet {
	t.Helper()
	warmPoller.Do(func() {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		w.Close()
	})
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	set := fdSet{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's descriptor, closed by now
		}
		set[fd] = target
	}
	return set
}

// diff describes the descriptors open in s but not in before, and the other
// way round; it is empty when both hold the same.
func (s fdSet) diff(before fdSet) string {
	var out []string
	for fd, target := range s {
		if before[fd] != target {
			out = append(out, fmt.Sprintf("opened %d -> %s", fd, target))
		}
	}
	for fd, target := range before {
		if s[fd] != target {
			out = append(out, fmt.Sprintf("closed %d -> %s", fd, target))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// checkNoLeak fails the test when the descriptors open now differ from
// before.
func checkNoLeak(t *testing.T, before fdSet) {
	t.Helper()
	if d := openFds(t).diff(before); d != "" {
		t.Errorf("descriptors changed: %s", d)
	}
}

// pair returns both ends of a channel socketpair, closed when the test ends.
func pair(t *testing.T) (a, b *ipc.Channel) {
	t.Helper()
	x, y, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	a, b = ipc.NewChannel(x), ipc.NewChannel(y)
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// pipe is a non-blocking pipe closed when the test ends, unless the test
// closed an end itself through closeWriter.
type pipe struct{ r, w int }

func newPipe(t *testing.T) *pipe {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	t.Cleanup(func() {
		unix.Close(p.r)
		p.closeWriter()
	})
	return p
}

func (p *pipe) closeWriter() {
	if p.w >= 0 {
		unix.Close(p.w)
		p.w = -1
	}
}

// checkWriterGone closes the test's own write end and checks that the read
// end then sees EOF, which it does only when no descriptor for the write end
// is left anywhere: not in this process and not in flight on a socket.
func (p *pipe) checkWriterGone(t *testing.T) {
	t.Helper()
	p.closeWriter()
	var buf [8]byte
	if n, err := unix.Read(p.r, buf[:]); n != 0 || err != nil {
		t.Errorf("read after closing the write end = %d, %v; want EOF: a copy of it is still open", n, err)
	}
}

// dups returns n fresh descriptors for the open file behind fd. The caller
// closes them.
func dups(t *testing.T, fd, n int) []int {
	t.Helper()
	out := make([]int, n)
	for i := range out {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeFds(out[:i])
			t.Fatal(err)
		}
		out[i] = d
	}
	return out
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func isCloseOnExec(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("fcntl(%d, F_GETFD): %v", fd, err)
	}
	return flags&unix.FD_CLOEXEC != 0
}

// waitReadable polls fd until it is readable, at least once and for up to
// limit; it returns os.ErrDeadlineExceeded when fd stayed unreadable.
func waitReadable(fd int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		msec := max(0, int((time.Until(deadline)+time.Millisecond-1)/time.Millisecond))
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, msec)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return err
		case n > 0:
			return nil
		case msec == 0:
			return os.ErrDeadlineExceeded
		}
	}
}
