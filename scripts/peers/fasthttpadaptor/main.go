// Command fasthttpadaptor is fasthttp's prefork serving an http.ServeMux
// through its net/http adaptor (fasthttpadaptor), for scripts/bench: the
// same application as ppnethttp and the net/http peer
// (scripts/peers/hellomux), -workers children sharing one listening socket.
package main

import (
	"github.com/procpool/procpool/scripts/peers/hellomux"
	"github.com/procpool/procpool/scripts/peers/peer"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

func main() { peer.Prefork(fasthttpadaptor.NewFastHTTPHandler(hellomux.New())) }
