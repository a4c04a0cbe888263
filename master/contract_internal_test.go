package master

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procpool/procpool/ipc"
	"golang.org/x/sys/unix"
)

// What childStart writes, readChild reads back; the fds sit at the numbers
// the child looks for, and no other PROCPOOL_ name reaches the child.
func TestChildContract(t *testing.T) {
	t.Setenv("PROCPOOL_STALE", "1")
	t.Setenv(EnvSlot, "9")
	files, env := childStart(5, 2, 17, "127.0.0.1:9", 10, 11, 12)
	if len(files) != StatsFd+1 || files[0] != 10 || files[ChannelFd] != 11 || files[StatsFd] != 12 {
		t.Fatalf("files %v: want null at 0, channel at %d, stats at %d", files, ChannelFd, StatsFd)
	}
	p := &fakeProc{env: env}
	slot, gen, cell, addr, err := readChild(p.getenv)
	if err != nil || slot != 5 || gen != 2 || cell != 17 || addr != "127.0.0.1:9" {
		t.Fatalf("read back slot %d gen %d cell %d addr %q, %v", slot, gen, cell, addr, err)
	}
	n := 0
	for _, e := range env {
		if strings.HasPrefix(e, "PROCPOOL_") {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d PROCPOOL_ variables in %q, want the contract's 4", n, env)
	}

	for _, c := range []struct{ name, slot, gen, cell, addr string }{
		{"no slot", "", "0", "1", "a:1"}, {"no generation", "1", "", "1", "a:1"}, {"no cell", "1", "0", "", "a:1"},
		{"a cell out of range", "1", "0", strconv.Itoa(ipc.Cells), "a:1"}, {"no address", "1", "0", "1", ""},
	} {
		env := map[string]string{EnvSlot: c.slot, EnvGen: c.gen, EnvCell: c.cell, EnvListen: c.addr}
		if _, _, _, _, err := readChild(func(k string) string { return env[k] }); err == nil {
			t.Errorf("%s: read back", c.name)
		}
	}
}

// The upgrade's fds and environment; UpgradeChannel and InheritedListener
// take theirs once.
func TestUpgradeContract(t *testing.T) {
	t.Setenv("PROCPOOL_SLOT", "1")
	t.Setenv("LISTEN_FDS", "1")
	files, env := upgradeStart(10, 11, 12, -1)
	if len(files) != upgradeReadyFd+1 || files[upgradeListenFd] != 11 || files[upgradeReadyFd] != 12 {
		t.Fatalf("files %v", files)
	}
	p := &fakeProc{env: env}
	if p.getenv(EnvSlot) != "" || p.getenv("LISTEN_FDS") != "" {
		t.Errorf("the new master would believe %q", env)
	}
	t.Setenv(EnvInheritFd, p.getenv(EnvInheritFd))
	if !Upgraded() || InheritedListener() != upgradeListenFd || Upgraded() || InheritedListener() != 0 {
		t.Error("InheritedListener does not take fd 3 exactly once")
	}
	t.Setenv(EnvUpgradeFd, "x")
	if UpgradeChannel() != 0 {
		t.Error("an upgrade channel on a bad fd")
	}
}

// Both ends of the daemon's report: readyByte, or the error's text.
func TestDaemonReport(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{{nil, string(rune(readyByte))}, {errors.New("address in use"), "address in use"}} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Dup(int(w.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		_, env := daemonStart(0, 1, 2)
		if !strings.HasSuffix(env[len(env)-1], "="+strconv.Itoa(daemonReportFd)) {
			t.Fatalf("daemon env ends %q", env[len(env)-1])
		}
		t.Setenv(EnvDaemonFd, strconv.Itoa(fd))
		if !Detached() {
			t.Fatal("not detached")
		}
		report := DaemonReporter()
		report(c.err)
		report(errors.New("only the first counts"))
		buf := make([]byte, 100)
		n, _ := r.Read(buf)
		r.Close()
		if string(buf[:n]) != c.want {
			t.Errorf("report %q, want %q", buf[:n], c.want)
		}
	}
}

// A child that did not open its stats cell (started with child.Run's
// private one) is retired once ready, and its slot not respawned: with
// every slot so, the master stops with ErrChildrenFailed.
func TestChildWithoutStatsCell(t *testing.T) {
	m, f, kids := newFakeMaster(t, 2, Config{})
	m.stats.Cell(kids[1].cell).Pid.Store(0)
	m.maintain(m.now())
	if kids[1].state != draining || !m.slots[1].fatal || kids[0].state != ready || m.slots[0].fatal {
		t.Fatalf("states %v %v, slots %+v", kids[0].state, kids[1].state, m.slots)
	}
	f.exit(kids[1].pid, exited(0))
	m.reap()
	m.maintain(m.now().Add(time.Hour))
	if kidOf(m, 1) != nil || m.stopping != running {
		t.Fatal("slot 1 respawned, or the master stopped")
	}

	m.stats.Cell(kids[0].cell).Pid.Store(0)
	m.maintain(m.now())
	f.exit(kids[0].pid, exited(0))
	m.reap()
	m.maintain(m.now())
	if !errors.Is(m.stopErr(), ErrChildrenFailed) || m.stopping != fast {
		t.Fatalf("no child can run: stopping %v, %v", m.stopping, m.stopErr())
	}
}
