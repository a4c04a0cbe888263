package master

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestReloadOutcomeFile: outcomes are numbered per master, read back as
// written, and removed with the pidfile.
func TestReloadOutcomeFile(t *testing.T) {
	t.Parallel()
	pidfile := filepath.Join(t.TempDir(), "procpool.pid")
	if o, err := ReadReloadOutcome(pidfile); err != nil || o != (ReloadOutcome{}) {
		t.Fatalf("no file: %+v, %v; want the zero outcome", o, err)
	}
	pid := os.Getpid()
	// A file left by another master: numbering starts again at 1.
	if err := os.WriteFile(pidfile+reloadSuffix, []byte("1 7 ok generation 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		write ReloadOutcome
		want  ReloadOutcome
		text  string
	}{
		{ReloadOutcome{Pid: pid, OK: true, Gen: 1}, ReloadOutcome{Pid: pid, Seq: 1, OK: true, Gen: 1},
			"%d 1 ok generation 1\n"},
		{ReloadOutcome{Pid: pid, Reason: "config c line 2: workers: bad\nvalue"},
			ReloadOutcome{Pid: pid, Seq: 2, Reason: "config c line 2: workers: bad value"},
			"%d 2 rejected: config c line 2: workers: bad value\n"},
	}
	for _, s := range steps {
		if err := writeReloadOutcome(pidfile, s.write); err != nil {
			t.Fatal(err)
		}
		got, err := ReadReloadOutcome(pidfile)
		if err != nil || got != s.want {
			t.Errorf("read back %+v, %v; want %+v", got, err, s.want)
		}
		b, _ := os.ReadFile(pidfile + reloadSuffix)
		if want := fmt.Sprintf(s.text, pid); string(b) != want {
			t.Errorf("file holds %q, want %q", b, want)
		}
	}
	if m, _ := filepath.Glob(pidfile + reloadSuffix + ".*"); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
	p, err := CreatePidfile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	p.Remove()
	if _, err := os.Stat(pidfile + reloadSuffix); !os.IsNotExist(err) {
		t.Errorf("reload file after the pidfile's Remove: %v, want gone", err)
	}
}

func TestParseReloadOutcomeBad(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "1 2", "x 2 ok generation 1", "1 2 ok generation x", "1 2 maybe"} {
		if o, err := parseReloadOutcome(s); err == nil {
			t.Errorf("parse %q = %+v, want an error", s, o)
		}
	}
}
