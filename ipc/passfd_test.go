package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// TestPassFdsToChild is the master's hand-off across a real process
// boundary, in the style of syscall's TestPassFD: the test binary runs
// itself again as echoFdsHelper with the child end of a channel as fd 3,
// passes it accepted loopback connections and lets it answer them.
func TestPassFdsToChild(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	before := openFds(t)
	clients, served := loopbackConns(t, 6)
	batches := [][]int{served[:4], served[4:]}

	masterFd, childFd, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	ch := ipc.NewChannel(masterFd)
	childEnd := os.NewFile(uintptr(childFd), "ipc-child")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=echofds", "PROCPOOL_IPC_WANT="+strconv.Itoa(len(served)))
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Start()
	childEnd.Close()
	if err != nil {
		ch.Close()
		closeFds(served)
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waited := false
	t.Cleanup(func() {
		if !waited {
			cancel()
			<-exited
		}
	})

	for _, fds := range batches {
		err := ch.Send(ipc.Msg{Cmd: ipc.CmdFds, Pid: int32(os.Getpid())}, fds)
		closeFds(fds)
		if err != nil {
			ch.Close()
			t.Fatalf("Send: %v", err)
		}
	}
	ch.Close() // the helper's EOF: nothing more comes

	for i, c := range clients {
		expectReply(t, c, fmt.Sprintf("conn %d\n", i))
	}
	err = <-exited
	waited = true
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out.Bytes())
	}
	for _, c := range clients {
		c.Close()
	}
	checkNoLeak(t, before)
}

// echoFdsHelper is the child half of TestPassFdsToChild. It receives fds on
// fd 3 until EOF, writes "conn N\n" on the Nth and closes it, and exits 0 if
// it got as many as PROCPOOL_IPC_WANT, each of them close-on-exec.
func echoFdsHelper() int {
	want, err := strconv.Atoi(os.Getenv("PROCPOOL_IPC_WANT"))
	if err != nil {
		return fail("PROCPOOL_IPC_WANT: %v", err)
	}
	ch := ipc.NewChannel(3)
	got := 0
	var fds []int
	for {
		var m ipc.Msg
		m, fds, err = ch.Recv(fds)
		switch {
		case errors.Is(err, ipc.ErrAgain):
			if err := waitReadable(3, 10*time.Second); err != nil {
				return fail("waiting for the channel: %v", err)
			}
			continue
		case err == io.EOF:
			if got != want {
				return fail("got %d fds, want %d", got, want)
			}
			return 0
		case err != nil:
			return fail("Recv: %v", err)
		}
		if m.Cmd != ipc.CmdFds || int(m.Arg) != len(fds) || m.Pid != int32(os.Getppid()) {
			return fail("received %+v with %d fds", m, len(fds))
		}
		for _, fd := range fds {
			flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil || flags&unix.FD_CLOEXEC == 0 {
				return fail("fd %d: flags %#x, %v; want FD_CLOEXEC", fd, flags, err)
			}
			if _, err := unix.Write(fd, fmt.Appendf(nil, "conn %d\n", got)); err != nil {
				return fail("write on fd %d: %v", fd, err)
			}
			unix.Close(fd)
			got++
		}
	}
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "echofds helper: "+format+"\n", args...)
	return 1
}
