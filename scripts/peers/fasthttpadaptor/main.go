// Command fasthttpadaptor is fasthttp's prefork serving an http.ServeMux
// through its net/http adaptor (fasthttpadaptor), for scripts/bench: the
// same application as ppnethttp and the net/http peer
// (scripts/peers/hellomux), -workers children sharing one listening socket.
package main

import (
	"flag"
	"log"
	"os"
	"runtime"

	"github.com/procpool/procpool/scripts/peers/hellomux"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"github.com/valyala/fasthttp/prefork"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve")
	workers := flag.Int("workers", runtime.NumCPU(), "number of child processes")
	flag.Parse()
	// The master starts one child per GOMAXPROCS; each child resets it to 1.
	runtime.GOMAXPROCS(*workers)

	h := fasthttpadaptor.NewFastHTTPHandler(hellomux.New())
	p := prefork.New(&fasthttp.Server{Handler: h})
	p.OnMasterDeath = func() { os.Exit(1) }
	log.Fatal(p.ListenAndServe(*listen))
}
