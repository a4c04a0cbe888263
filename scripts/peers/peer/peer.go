// Package peer holds what the server peers of scripts/bench share: the two
// flags bench passes every one of them, and the way both fasthttp peers run
// fasthttp's prefork.
package peer

import (
	"flag"
	"log"
	"os"
	"runtime"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/prefork"
)

// Flags defines -listen and -workers, which scripts/bench passes to every
// server peer; workers says what the count means for this peer. The caller
// defines its own flags, if any, and then calls flag.Parse.
func Flags(workers string) (*string, *int) {
	return flag.String("listen", "127.0.0.1:8080", "address to serve"),
		flag.Int("workers", runtime.NumCPU(), workers)
}

// Prefork serves h with fasthttp's prefork: a master that re-executes
// itself as -workers children sharing one listening socket.
func Prefork(h fasthttp.RequestHandler) {
	listen, workers := Flags("number of child processes")
	flag.Parse()
	// The master starts one child per GOMAXPROCS; each child resets it to 1.
	runtime.GOMAXPROCS(*workers)
	p := prefork.New(&fasthttp.Server{Handler: h})
	// Children poll their parent and leave when the master is gone.
	p.OnMasterDeath = func() { os.Exit(1) }
	log.Fatal(p.ListenAndServe(*listen))
}
