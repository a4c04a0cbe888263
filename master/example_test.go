package master_test

import (
	"fmt"
	"os"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/master"
)

// A complete prefork server with its own handler. The same binary is both
// master and children: the master re-executes it with PROCPOOL_SLOT set, and
// a child takes what it was started with from OpenChild.
func Example() {
	hello := func(w *child.Response, r *child.Request) {
		w.SetContentType("text/plain")
		w.WriteString("Hello from ")
		w.Write(r.Path)
	}
	if _, ok := master.ChildSlot(); ok {
		c, err := master.OpenChild()
		if err == nil {
			err = child.Run(child.Config{Channel: c.Channel, Slot: c.Slot, Stats: c.Stats}, child.HandlerFunc(hello))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	err := master.Run(master.Config{Listen: "127.0.0.1:8080", Affinity: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
