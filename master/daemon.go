package master

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Daemonize starts this binary again, detached: in a new session, stdin on
// /dev/null and stdout and stderr on logPath (or /dev/null). It waits until
// the detached master is serving or has failed, and returns what the
// command typed by the user should exit with: 0 once serving, 1 with the
// failure written to stderr. Go cannot fork without exec, so this is how
// the classic double fork reads here.
func Daemonize(logPath string, stderr io.Writer) int {
	out, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return 1
	}
	defer out.Close()
	logf := out
	if logPath != "" {
		if logf, err = os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW, 0o644); err != nil {
			if errors.Is(err, unix.ELOOP) {
				err = fmt.Errorf("%s is a symbolic link; refusing to follow it", logPath)
			}
			fmt.Fprintf(stderr, "procpool: -log: %v\n", err)
			return 1
		}
		defer logf.Close()
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "procpool: %v\n", err)
		return 1
	}
	defer r.Close()
	files, env := daemonStart(out.Fd(), logf.Fd(), w.Fd())
	attr := &syscall.ProcAttr{Env: env, Files: files, Sys: &syscall.SysProcAttr{Setsid: true}}
	argv := append([]string{MasterTitle}, os.Args[1:]...)
	pid, err := syscall.ForkExec("/proc/self/exe", argv, attr)
	w.Close()
	if err != nil {
		fmt.Fprintf(stderr, "procpool: daemonize: %v\n", err)
		return 1
	}
	msg, _ := io.ReadAll(r)
	if len(msg) == 1 && msg[0] == readyByte {
		return 0
	}
	if len(msg) == 0 {
		msg = []byte("the detached master exited before it was ready (pid " + strconv.Itoa(pid) + ")")
	}
	fmt.Fprintf(stderr, "procpool: %s\n", msg)
	return 1
}

// Detached reports whether this master was started by Daemonize: it then
// reports through DaemonReporter.
func Detached() bool { return os.Getenv(EnvDaemonFd) != "" }

// DaemonReporter returns, in a detached master, the function that tells the
// starting process the outcome: nil error means serving. It returns nil in
// any other process. Only the first report counts.
func DaemonReporter() func(error) {
	fd := inheritedFd(EnvDaemonFd)
	if fd < 0 {
		return nil
	}
	unix.CloseOnExec(fd)
	return func(err error) {
		if fd < 0 {
			return
		}
		if err == nil {
			unix.Write(fd, []byte{readyByte})
		} else {
			unix.Write(fd, []byte(err.Error()))
		}
		unix.Close(fd)
		fd = -1
	}
}
