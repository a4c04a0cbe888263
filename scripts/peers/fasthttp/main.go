// Command fasthttp is the fasthttp peer for scripts/bench: a master that
// re-executes itself as -workers children sharing one listening socket
// (fasthttp's prefork package); GET / answers "Hello World".
package main

import (
	"strconv"
	"strings"
	"time"

	"github.com/procpool/procpool/scripts/peers/peer"
	"github.com/valyala/fasthttp"
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

func main() { peer.Prefork(handle) }
