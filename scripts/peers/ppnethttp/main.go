// Command ppnethttp is procpool serving an http.ServeMux through
// child/nethttp, for scripts/bench: the same binary is master and children;
// -mode fdpass or reuseport, one child per -workers, pinned with -affinity.
// GET / answers "Hello World" (scripts/peers/hellomux).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/child/nethttp"
	"github.com/procpool/procpool/master"
	"github.com/procpool/procpool/scripts/peers/hellomux"
	"github.com/procpool/procpool/scripts/peers/peer"
)

func main() {
	listen, workers := peer.Flags("number of children")
	mode := flag.String("mode", master.ModeFdpass, "fdpass or reuseport")
	affinity := flag.Bool("affinity", true, "pin child i to CPU i")
	batch := flag.Bool("sched-batch", false, "children under SCHED_BATCH")
	pool := flag.Int("pool", 0, "worker goroutines per child (0: nethttp.DefaultPool)")
	flag.Parse()

	if _, ok := master.ChildSlot(); ok {
		os.Exit(runChild(*mode, *pool))
	}
	err := master.Run(master.Config{
		Listen: *listen, Workers: *workers, Mode: *mode, Affinity: *affinity,
		SchedBatch: *batch, Args: os.Args[1:],
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ppnethttp:", err)
		os.Exit(1)
	}
}

func runChild(mode string, pool int) int {
	c, err := master.OpenChild()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ppnethttp child:", err)
		return 2
	}
	cfg := child.Config{Channel: c.Channel, Slot: c.Slot, Stats: c.Stats, Listener: -1, Pool: pool}
	if mode == master.ModeReuseport {
		fd, err := master.Listen(c.Listen, 0, true)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ppnethttp child:", err)
			return 2
		}
		cfg.Listener = fd
	}
	if err := child.Run(cfg, nethttp.Handler(hellomux.New())); err != nil && err != child.ErrMasterGone {
		fmt.Fprintln(os.Stderr, "ppnethttp child:", err)
		return 1
	}
	return 0
}
