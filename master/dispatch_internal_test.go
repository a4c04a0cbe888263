package master

import (
	"testing"

	"golang.org/x/sys/unix"
)

// closeSent closes exactly the fds it is given: with one close_range when
// they make a whole range, one by one otherwise, never an fd in a gap.
func TestCloseSent(t *testing.T) {
	open := func(fd int) bool {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		return err == nil
	}
	// Consecutive descriptors: dups of one pipe end, taken in one go.
	dups := func(n int) []int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
		fds := make([]int, n)
		for i := range fds {
			fd, err := unix.FcntlInt(uintptr(p[0]), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd // closeSent closes them (or the test below)
		}
		return fds
	}

	fds := dups(5)
	whole := []int{fds[3], fds[1], fds[0], fds[4], fds[2]} // a range in dealing order
	if fds[4]-fds[0] != 4 {
		closeSent(whole) // another test took a number in between
	} else {
		if got := closeSent(whole); len(got) != 0 {
			t.Fatalf("closeSent returned %v, want it emptied", got)
		}
		for _, fd := range fds {
			if open(fd) {
				t.Errorf("fd %d of a whole range left open", fd)
			}
		}
	}

	fds = dups(5)
	gappy := []int{fds[0], fds[1], fds[3], fds[4]} // fds[2] is not ours to close
	closeSent(gappy)
	for _, fd := range gappy {
		if open(fd) {
			t.Errorf("fd %d left open", fd)
		}
	}
	if !open(fds[2]) {
		t.Errorf("fd %d in the gap was closed", fds[2])
	}
	unix.Close(fds[2])
}
