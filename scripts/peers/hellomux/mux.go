// Package hellomux is the http.ServeMux the net/http-handler rows of
// scripts/bench serve: GET / answers "Hello World" as text/plain, as the
// net/http peer's does, so that net/http, procpool through child/nethttp and
// fasthttp through fasthttpadaptor run the same application.
package hellomux

import "net/http"

var hello = []byte("Hello World")

// New returns the application.
func New() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(hello)
	})
	return mux
}
