// Command nethttp is the Go standard library peer for scripts/bench: one
// process, GOMAXPROCS set to -workers, GET / answers "Hello World".
package main

import (
	"flag"
	"log"
	"net/http"
	"runtime"
)

var hello = []byte("Hello World")

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve")
	workers := flag.Int("workers", runtime.NumCPU(), "GOMAXPROCS")
	flag.Parse()
	runtime.GOMAXPROCS(*workers)

	http.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(hello)
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}
