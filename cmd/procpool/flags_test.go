package main

// The command line and the config file, through the real binary: exit
// statuses, messages, and settings that take effect.

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "procpool.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// rewrite replaces a file's content in one step, as an editor would.
func rewrite(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestBadUsage expects exit status 2 and a message naming what is wrong.
func TestBadUsage(t *testing.T) {
	t.Parallel()
	unknownKey := writeConfig(t, "# procpool\nworkers = 2\nfrobnicate = 1\n")
	badNumber := writeConfig(t, "workers = 2\n\nworkers = many\n")
	badMode := writeConfig(t, "workers = 2\nmode = foo\n")
	zeroWorkers := writeConfig(t, "mode = fdpass\n# one\n\nworkers = 0\n")
	noEquals := writeConfig(t, "workers 2\n")
	missing := filepath.Join(t.TempDir(), "missing.conf")

	tests := []struct {
		name string
		args []string
		want []string // every one must appear in stderr
	}{
		{"workers 0", []string{"-workers", "0"}, []string{"-workers"}},
		{"workers too many", []string{"-workers=100000"}, []string{"-workers"}},
		{"mode foo", []string{"-mode", "foo"}, []string{"-mode", "foo"}},
		{"unknown flag", []string{"-bogus"}, []string{"-bogus"}},
		{"bad duration", []string{"-grace=soon"}, []string{"-grace"}},
		{"stray argument", []string{"serve"}, []string{"serve"}},
		{"config unknown key", []string{"-config", unknownKey}, []string{unknownKey, "line 3", "frobnicate"}},
		{"config bad number", []string{"-config", badNumber}, []string{badNumber, "line 3", "workers"}},
		{"config bad mode", []string{"-config", badMode}, []string{badMode, "line 2", "mode"}},
		{"config zero workers", []string{"-config", zeroWorkers}, []string{zeroWorkers, "line 4", "workers"}},
		{"config without =", []string{"-config", noEquals}, []string{noEquals, "line 1"}},
		{"config missing", []string{"-config", missing}, []string{missing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Never the default port, should the bad usage go unnoticed.
			args := append([]string{"-listen=127.0.0.1:0"}, tt.args...)
			code, stderr := runToExit(t, args...)
			if code != 2 {
				t.Errorf("procpool %v: exit status %d, want 2; stderr:\n%s", args, code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("procpool %v: stderr does not name %q:\n%s", args, w, stderr)
				}
			}
		})
	}
}

// TestAddressInUse expects exit status 1 when the port is taken.
func TestAddressInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, mode := range []string{"fdpass", "reuseport"} {
		t.Run(mode, func(t *testing.T) {
			code, stderr := runToExit(t, "-listen="+ln.Addr().String(), "-mode="+mode, "-workers=1")
			if code != 1 {
				t.Errorf("exit status %d, want 1; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, "already in use") {
				t.Errorf("stderr does not say the address is already in use:\n%s", stderr)
			}
		})
	}
}

var reStartedWith = regexp.MustCompile(`msg="master started" .*mode=(\S+) workers=(\d+)`)

func startedWith(t *testing.T, s *server) (mode, workers string) {
	t.Helper()
	for _, line := range s.log.snapshot() {
		if m := reStartedWith.FindStringSubmatch(line); m != nil {
			return m[1], m[2]
		}
	}
	t.Fatalf("no mode and workers in the start line:\n%s", s.log)
	return "", ""
}

// TestConfigFile starts servers from a config file, with and without flags
// that override it.
func TestConfigFile(t *testing.T) {
	t.Parallel()
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		conf := writeConfig(t, "# three children\nworkers = 3   # trailing comment\n")
		s := startServer(t, "-config="+conf)
		s.waitReady(3)
		if _, w := startedWith(t, s); w != "3" {
			t.Errorf("master started with workers=%s, want 3", w)
		}
		if got := s.children(); len(got) != 3 {
			t.Errorf("master has children %v, want 3", got)
		}
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("GET /: %+v", r)
		}
	})
	t.Run("flag wins", func(t *testing.T) {
		t.Parallel()
		conf := writeConfig(t, "workers = 3\nmode = reuseport\n")
		s := startServer(t, "-workers=1", "-config="+conf)
		kids := s.waitReady(1)
		mode, w := startedWith(t, s)
		if w != "1" {
			t.Errorf("master started with workers=%s, want the flag's 1 over the file's 3", w)
		}
		if mode != "reuseport" {
			t.Errorf("master started with mode=%s, want the file's reuseport", mode)
		}
		if got := s.children(); len(got) != 1 {
			t.Errorf("master has children %v, want 1", got)
		}
		// The child got the file's mode too: it listens itself.
		ownListener := func(l sockets) bool { return l.byPid[kids[0].pid] == 1 && l.byPid[s.pid] == 0 }
		if l := pollOwners(t, ownListener, s.port, tcpListen, nil, s.pid, kids[0].pid); !ownListener(l) {
			t.Errorf("LISTEN sockets: child %d, master %d; want 1 and 0", l.byPid[kids[0].pid], l.byPid[s.pid])
		}
		if r := s.get(t, "/"); r.status != 200 || r.body != helloBody {
			t.Errorf("GET /: %+v", r)
		}
	})
}

// TestReuseportPortTaken: the kernel would let a second reuseport server of the
// same user join the first one's SO_REUSEPORT group and silently share its
// port; procpool refuses instead.
func TestReuseportPortTaken(t *testing.T) {
	t.Parallel()
	first := startServer(t, "-mode=reuseport", "-workers=1")
	first.waitReady(1)
	code, stderr := runToExit(t, "-listen="+first.addr, "-mode=reuseport", "-workers=1")
	if code != 1 || !strings.Contains(stderr, "already in use") {
		t.Errorf("second reuseport server on %s: exit status %d, want 1 and \"already in use\"; stderr:\n%s",
			first.addr, code, stderr)
	}
}

// TestUsageMessages: every mistake on the command line or in the config
// file is one line on stderr that names the flag and what it wants, and
// exit status 2. Mistakes of syntax add where the flags are listed.
func TestUsageMessages(t *testing.T) {
	t.Parallel()
	zeroWord := writeConfig(t, "workers = 2\nworkers = zero\n")
	zeroTimeout := writeConfig(t, "# quick\nidle-timeout = 0s\n")
	const h = " (procpool -h lists the flags)"
	const noAuth = "the admin listener has no authentication: give a loopback address or unix:PATH, or add -admin-public"
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-workers", "abc"}, `-workers: want a whole number, got "abc"` + h},
		{[]string{"-workers=99999999999999999999"}, `-workers: "99999999999999999999" is out of range` + h},
		{[]string{"-grace", "10"}, `-grace: want a duration with a unit, such as 10s, 500ms or 1m30s, got "10"` + h},
		{[]string{"-bogus"}, "unknown flag -bogus" + h},
		{[]string{"-listen"}, "-listen needs a value" + h},
		{[]string{"-listen", "::1:80"}, `-listen: listen address "::1:80": address ::1:80: too many colons in address`},
		{[]string{"-listen", "127.0.0.1:http"}, `-listen: listen address "127.0.0.1:http": bad port "http"`},
		{[]string{"-affinity", "false"}, "-affinity is a boolean flag: write -affinity=false, not -affinity false" + h},
		{[]string{"-affinity=maybe"}, `-affinity: want true or false, got "maybe"` + h},
		{[]string{"serve"}, `unexpected argument "serve": flags come before any other argument, and procpool takes none` + h},
		{[]string{"-idle-timeout", "0"}, "-idle-timeout: must be positive, got 0s"},
		{[]string{"-header-timeout=-1s"}, "-header-timeout: must be positive, got -1s"},
		{[]string{"-max-headers", "0"}, "-max-headers: want 1 to 65536 fields, got 0"},
		{[]string{"-max-request-line", "10"}, "-max-request-line: want 64 to 1048576 bytes, got 10"},
		{[]string{"-workers", "0"}, "-workers: want 1 to 1024, got 0"},
		{[]string{"-admin", "nohost"}, `-admin: want host:port or unix:PATH, got "nohost"`},
		{[]string{"-admin", "unix:"}, `-admin: want host:port or unix:PATH, got "unix:"`},
		{[]string{"-admin", ":9091"}, "-admin :9091 listens on every address, and " + noAuth},
		{[]string{"-admin", "0.0.0.0:9091"}, "-admin 0.0.0.0:9091 listens on every address, and " + noAuth},
		{[]string{"-admin", "10.1.2.3:9091"}, "-admin 10.1.2.3:9091 is not a loopback address, and " + noAuth},
		{[]string{"-admin", "example.com:9091"}, `-admin example.com:9091: "example.com" is not a loopback address, and ` + noAuth},
		{[]string{"-config", zeroWord}, "config " + zeroWord + ` line 2: workers: want a whole number, got "zero"`},
		{[]string{"-config", zeroTimeout}, "config " + zeroTimeout + " line 2: -idle-timeout: must be positive, got 0s"},
		{[]string{"-s", "restart"}, `-s: want stop, quit, reload, reopen, upgrade or status, got "restart"`},
		{[]string{"-s", "status"}, "-s status reads the table from the admin listener: give -admin (or admin = in -config)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			// Never the default port, should the bad usage go unnoticed.
			args := append([]string{"-listen=127.0.0.1:0"}, tt.args...)
			code, stderr := runToExit(t, args...)
			if want := "procpool: " + tt.want + "\n"; code != 2 || stderr != want {
				t.Errorf("procpool %v:\n got status %d, stderr %q\nwant status 2, stderr %q", args, code, stderr, want)
			}
		})
	}
}

// TestHelp: -h prints the usage, with every flag, and exits 0.
func TestHelp(t *testing.T) {
	t.Parallel()
	code, stderr := runToExit(t, "-h")
	if code != 0 || !strings.HasPrefix(stderr, "Usage of procpool:\n") {
		t.Fatalf("-h: status %d, stderr:\n%s", code, stderr)
	}
	for _, flag := range []string{"-admin-public", "-s string", "-workers int"} {
		if !strings.Contains(stderr, "\n  "+flag) {
			t.Errorf("-h does not list %s:\n%s", flag, stderr)
		}
	}
}
