package main

import (
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// openLog points stderr (fd 2) at path, appending. Everything logs to fd 2 —
// the master's slog lines, the children it starts, a panic — so one dup3
// moves all of it, and a reopen after rotation is the same call again.
func openLog(path string) error {
	if path == "" {
		return nil
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Dup3(fd, 2, 0); err != nil {
		return os.NewSyscallError("dup3", err)
	}
	return nil
}

// newLogger is the master's lifecycle log: one line per event, on stderr
// (which -log points at a file).
func newLogger(json bool) *slog.Logger {
	if json {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
