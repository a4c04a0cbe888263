package main

import "github.com/procpool/procpool/child"

// routes is the built-in application, written against the same Handler API
// a user plugs their own code into.
//
//	GET / and HEAD /       Hello World
//	any other method on /  the request body echoed
//	anything on /echo      the request body echoed
//	anything else          404
func routes(w *child.Response, r *child.Request) {
	switch string(r.Path) {
	case "/":
		if m := string(r.Method); m == "GET" || m == "HEAD" {
			w.SetContentType("text/plain")
			w.WriteString("Hello World")
			return
		}
		echo(w, r)
	case "/echo":
		echo(w, r)
	default:
		if testRoute != nil && testRoute(w, r) {
			return
		}
		w.SetStatus(404)
		w.SetContentType("text/plain")
		w.WriteString("Not Found\n")
	}
}

func echo(w *child.Response, r *child.Request) {
	w.SetContentType("application/octet-stream")
	w.Write(r.Body)
}

// testRoute, set only in binaries built for tests (sleephook.go), serves
// routes that exist to make a child misbehave on purpose.
var testRoute func(w *child.Response, r *child.Request) bool
