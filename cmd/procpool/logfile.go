package main

import (
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// openLog points stderr (fd 2) at path, appending. Everything logs to fd 2 —
// the master's slog lines, the children it starts, a panic — so one dup3
// moves all of it. The file is opened without following a symbolic link.
func openLog(path string) error {
	return pointLog(path, false)
}

// reopenLog is openLog after a rotation. A process whose stdout is the log
// too (a detached master, a child) gets fd 1 moved with fd 2, so that
// neither keeps the rotated file open.
func reopenLog(path string) error {
	return pointLog(path, true)
}

func pointLog(path string, withStdout bool) error {
	if path == "" {
		return nil
	}
	if withStdout {
		var out, err unix.Stat_t
		withStdout = unix.Fstat(1, &out) == nil && unix.Fstat(2, &err) == nil &&
			out.Dev == err.Dev && out.Ino == err.Ino
	}
	return openAppend(path, func(fd int) error {
		if err := unix.Dup3(fd, 2, 0); err != nil {
			return os.NewSyscallError("dup3", err)
		}
		if withStdout {
			if err := unix.Dup3(fd, 1, 0); err != nil {
				return os.NewSyscallError("dup3", err)
			}
		}
		return nil
	})
}

// newLogger is the master's lifecycle log: one line per event, on stderr
// (which -log points at a file). Durations read as 2s or 150ms, in JSON
// too, where slog would write nanoseconds.
func newLogger(json bool) *slog.Logger {
	if json {
		return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{ReplaceAttr: readableDuration}))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func readableDuration(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}
