package master_test

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// fdCount is the number of fds this process has open.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

// closeFd closes fd at the end of the test.
func closeFd(t *testing.T, fd int) {
	t.Helper()
	t.Cleanup(func() { unix.Close(fd) })
}

func sockopt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatalf("getsockopt(%d, %d, %d): %v", fd, level, opt, err)
	}
	return v
}
