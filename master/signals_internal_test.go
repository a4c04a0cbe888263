package master

import (
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// The Signals table drives the order: several pending signals are handled
// as its rows come, and a stop makes the master ignore the rest.
func TestSignalOrder(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		sigs    []syscall.Signal
		dies    bool // child 0 exits before the signals are handled
		check   func(m *Master, reopened int) bool
		checked string
	}{
		{"reap comes before a stop: a death is still a crash", Config{}, []syscall.Signal{unix.SIGINT, unix.SIGCHLD}, true,
			func(m *Master, reopened int) bool { return m.stopping == fast && m.slots[0].failures == 1 }, "fast stop, slot 0 backing off"},
		{"a stop overrules a reload", Config{}, []syscall.Signal{unix.SIGHUP, unix.SIGTERM}, false,
			func(m *Master, reopened int) bool { return m.stopping == graceful && m.gen == 0 }, "graceful stop, no new generation"},
		{"a fast stop overrules a graceful one", Config{}, []syscall.Signal{unix.SIGQUIT, unix.SIGINT}, false,
			func(m *Master, reopened int) bool { return m.stopping == fast }, "fast stop"},
		{"a stop overrules resizing", Config{}, []syscall.Signal{unix.SIGTTIN, unix.SIGQUIT}, false,
			func(m *Master, reopened int) bool { return m.stopping == graceful && len(m.slots) == 2 }, "graceful stop, 2 slots"},
		{"reload, then one more", Config{}, []syscall.Signal{unix.SIGTTIN, unix.SIGHUP}, false,
			func(m *Master, reopened int) bool { return m.gen == 1 && len(m.slots) == 3 && kidOf(m, 2) == nil }, "gen 1 of 3 slots, slot 2 not yet spawned"},
		{"the shutdown delay lets only reopen through", Config{ShutdownDelay: time.Minute},
			[]syscall.Signal{unix.SIGTERM, unix.SIGHUP, unix.SIGTTIN, unix.SIGUSR1}, false,
			func(m *Master, reopened int) bool {
				return m.delaying() && m.gen == 0 && len(m.slots) == 2 && reopened == 1
			},
			"delaying, gen 0 of 2 slots, reopened"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, f, _ := newFakeMaster(t, 2, c.cfg)
			reopened := 0
			m.cfg.Reopen = func() error { reopened++; return nil }
			if c.dies {
				f.exit(kidOf(m, 0).pid, exited(1))
			}
			m.pending = pending(c.sigs...)
			m.handleSignals()
			if !c.check(m, reopened) {
				t.Fatalf("want %s; stopping %v, gen %d, slots %d, slot 0 %+v", c.checked, m.stopping, m.gen, len(m.slots), m.slots[0])
			}
		})
	}
}

// SIGUSR1 reopens the master's logs and tells every child to reopen theirs.
func TestReopen(t *testing.T) {
	m, _, kids := newFakeMaster(t, 2, Config{})
	reopened := 0
	m.cfg.Reopen = func() error { reopened++; return nil }
	m.pending = pending(unix.SIGUSR1)
	m.handleSignals()
	if reopened != 1 {
		t.Fatalf("master reopened %d times", reopened)
	}
	for _, k := range kids {
		if _, cmds := k.take(t); len(cmds) != 1 || cmds[0] != ipc.CmdReopen {
			t.Errorf("child %d told %v, want reopen", k.slot, cmds)
		}
	}
}

// Every row of the table acts, every -s name finds its signal, and no
// signal is listed twice.
func TestSignalTable(t *testing.T) {
	seen := map[syscall.Signal]bool{}
	for _, s := range Signals {
		if s.act == nil || s.Does == "" || seen[s.Sig] {
			t.Errorf("%v: act %v, does %q, listed before %v", s.Sig, s.act != nil, s.Does, seen[s.Sig])
		}
		seen[s.Sig] = true
		if s.Name == "" {
			continue
		}
		if sig, ok := SignalByName(s.Name); !ok || sig != s.Sig {
			t.Errorf("-s %s sends %v, want %v", s.Name, sig, s.Sig)
		}
	}
	if _, ok := SignalByName(""); ok {
		t.Error(`-s "" found a signal`)
	}
}

// A command that cannot go through the channel goes as the signal the
// table gives it; one without a signal is dropped.
func TestTellFallsBackToSignal(t *testing.T) {
	cases := []struct {
		cmd ipc.Cmd
		sig syscall.Signal // 0: none
	}{
		{ipc.CmdDrain, unix.SIGTERM},
		{ipc.CmdStop, unix.SIGINT},
		{ipc.CmdReopen, unix.SIGUSR1},
		{ipc.CmdPing, 0},
	}
	for _, c := range cases {
		t.Run(c.cmd.String(), func(t *testing.T) {
			m, f, kids := newFakeMaster(t, 1, Config{})
			k := kids[0]
			for k.ch.Send(ipc.Msg{Cmd: ipc.CmdPing}, nil) == nil {
			}
			m.tell(k.kid, c.cmd)
			got := f.killed(k.pid)
			if c.sig == 0 && len(got) != 0 || c.sig != 0 && (len(got) != 1 || got[0] != c.sig) {
				t.Fatalf("full channel, %v: signals %v, want %v", c.cmd, got, c.sig)
			}
		})
	}
}

// Each Config field is decided: a reload takes it, or keeps the running
// one. A new field fails here until it is given a line, and takeReloadable
// must agree with the line.
func TestReloadableFields(t *testing.T) {
	reloads := map[string]bool{
		"Workers": true, "Affinity": true, "SchedBatch": true, "Args": true, "Grace": true, "MaxConns": true,
		"Dispatch": true, "Stall": true, "Watchdog": true,
		"MaxRequests": true, "MaxLifetime": true, "MaxRSS": true, "RecycleJitter": true,
		// How the master listens and is run and controlled: fixed until a
		// restart or an upgrade (Listen and Mode are refused outright).
		"Listen": false, "Mode": false, "Backlog": false, "DeferAccept": false, "ListenFd": false, "UpgradeFd": false, "Admin": false, "AdminPublic": false,
		"Log": false, "Reload": false, "Ready": false, "Exe": false, "MasterArgs": false, "Pidfile": false,
		"Reopen": false, "Credential": false, "ListenMode": false,
		// How the master stops: the shutdown delay is read at SIGTERM; a
		// reload has not changed it so far.
		"ShutdownDelay": false,
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		field := typ.Field(i)
		want, ok := reloads[field.Name]
		if !ok {
			t.Errorf("Config.%s: decide whether a reload changes it (takeReloadable) and say so here", field.Name)
			continue
		}
		var running, n Config
		v := reflect.ValueOf(&n).Elem().Field(i)
		v.Set(nonZero(t, field.Type))
		running.takeReloadable(&n)
		if got := !reflect.ValueOf(running).Field(i).IsZero(); got != want {
			t.Errorf("Config.%s: a reload takes it: %v, want %v", field.Name, got, want)
		}
	}
}

// nonZero is some value of typ other than its zero.
func nonZero(t *testing.T, typ reflect.Type) reflect.Value {
	v := reflect.New(typ).Elem()
	switch typ.Kind() {
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(time.Second))
	case reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float64:
		v.SetFloat(0.5)
	case reflect.String:
		v.SetString("x")
	case reflect.Slice:
		v.Set(reflect.MakeSlice(typ, 1, 1))
	case reflect.Pointer:
		v.Set(reflect.New(typ.Elem()))
	case reflect.Func:
		v.Set(reflect.MakeFunc(typ, func([]reflect.Value) []reflect.Value {
			out := make([]reflect.Value, typ.NumOut())
			for i := range out {
				out[i] = reflect.Zero(typ.Out(i))
			}
			return out
		}))
	default:
		t.Fatalf("nonZero: a %v field; teach this test its kind", typ)
	}
	return v
}
