// Command fasthttp is the fasthttp peer for scripts/bench: a master that
// re-executes itself as -workers children sharing one listening socket
// (fasthttp's prefork package); GET / answers "Hello World".
package main

import (
	"flag"
	"log"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/prefork"
)

func handle(ctx *fasthttp.RequestCtx) {
	// /burn/N spins the CPU for N ms, as procpool's test build does, for
	// scripts/stall's uneven load.
	if ms, ok := strings.CutPrefix(string(ctx.Path()), "/burn/"); ok {
		if n, err := strconv.Atoi(ms); err == nil {
			for start := time.Now(); time.Since(start) < time.Duration(n)*time.Millisecond; {
			}
			ctx.SetBodyString("burnt\n")
			return
		}
	}
	if !ctx.IsGet() || string(ctx.Path()) != "/" {
		ctx.NotFound()
		return
	}
	ctx.SetContentType("text/plain")
	ctx.SetBodyString("Hello World")
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve")
	workers := flag.Int("workers", runtime.NumCPU(), "number of child processes")
	flag.Parse()
	// The master starts one child per GOMAXPROCS; each child resets it to 1.
	runtime.GOMAXPROCS(*workers)

	p := prefork.New(&fasthttp.Server{Handler: handle})
	// Children poll their parent and leave when the master is gone.
	p.OnMasterDeath = func() { os.Exit(1) }
	log.Fatal(p.ListenAndServe(*listen))
}
