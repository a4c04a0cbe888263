// Command nethttp is the Go standard library peer for scripts/bench: one
// process, GOMAXPROCS set to -workers, GET / answers "Hello World".
package main

import (
	"flag"
	"log"
	"net/http"
	"runtime"

	"github.com/procpool/procpool/scripts/peers/peer"
)

var hello = []byte("Hello World")

func main() {
	listen, workers := peer.Flags("GOMAXPROCS")
	flag.Parse()
	runtime.GOMAXPROCS(*workers)

	http.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(hello)
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}
