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
	// Consecutive descriptors: dups of one pipe end, placed in a free
	// window far above the numbers the kernel hands out first.
	base := 1000
	dups := func(n int) []int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	window:
		for ; ; base += n {
			for fd := base; fd < base+n; fd++ {
				if open(fd) {
					continue window
				}
			}
			break
		}
		fds := make([]int, n)
		for i := range fds {
			fds[i] = base + i // closeSent closes them (or the test below)
			if err := unix.Dup3(p[0], fds[i], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
		}
		base += n
		return fds
	}

	fds := dups(5)
	whole := []int{fds[3], fds[1], fds[0], fds[4], fds[2]} // a range in dealing order
	if got := closeSent(whole); len(got) != 0 {
		t.Fatalf("closeSent returned %v, want it emptied", got)
	}
	for _, fd := range fds {
		if open(fd) {
			t.Errorf("fd %d of a whole range left open", fd)
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
