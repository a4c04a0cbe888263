package master_test

import (
	"fmt"
	"os"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/master"
)

// A complete prefork server with its own handler. The same binary is both
// master and children: the master re-executes it with PROCPOOL_SLOT set.
func Example() {
	hello := func(w *child.Response, r *child.Request) {
		w.SetContentType("text/plain")
		w.WriteString("Hello from ")
		w.Write(r.Path)
	}
	if slot, ok := master.ChildSlot(); ok {
		err := child.Run(child.Config{Channel: master.ChannelFd, Slot: slot}, child.HandlerFunc(hello))
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
