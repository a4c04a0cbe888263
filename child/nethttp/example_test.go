package nethttp_test

import (
	"log"
	"net/http"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/child/nethttp"
	"github.com/procpool/procpool/master"
)

// An http.ServeMux application served by a prefork pool: the README's
// program, with main's body here. The same binary is master and children.
func Example() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello/{name}", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("Hello, " + r.PathValue("name") + "!\n")) })
	c, err := master.OpenChild() // fails in the master, which starts this binary again as each child
	if _, isChild := master.ChildSlot(); !isChild {
		err = master.Run(master.Config{Listen: "127.0.0.1:8080", Affinity: true})
	} else if err == nil { // nethttp.Handler implies pool mode: handlers run on worker goroutines
		err = child.Run(child.Config{Channel: c.Channel, Slot: c.Slot, Stats: c.Stats}, nethttp.Handler(mux))
	}
	if err != nil && err != child.ErrMasterGone {
		log.Fatal(err)
	}
}
