package child

import (
	"bytes"
	"testing"
)

// benchGet is a typical keep-alive request from a browser-like client.
var benchGet = []byte("GET / HTTP/1.1\r\n" +
	"Host: localhost:8080\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
	"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n" +
	"\r\n")

// helloWorld is the classic prefork benchmark handler.
func helloWorld(w *Response, r *Request) {
	w.SetContentType("text/plain")
	w.WriteString("Hello World")
}

// exchangeLoop returns a function that answers in once per call into a
// reused buffer and checks that all of it was consumed.
func exchangeLoop(tb testing.TB, in []byte, responses int) func() {
	e := NewExchanger(HandlerFunc(helloWorld))
	out := make([]byte, 0, 64<<10)
	return func() {
		var n int
		var closed bool
		out, n, closed = e.Exchange(out[:0], in)
		if n != len(in) || closed || bytes.Count(out, []byte("Hello World")) != responses {
			tb.Fatalf("consumed %d of %d, closed %v, output %q", n, len(in), closed, out)
		}
	}
}

func BenchmarkKeepAliveGet(b *testing.B) {
	run := exchangeLoop(b, benchGet, 1)
	b.ReportAllocs()
	for b.Loop() {
		run()
	}
}

func BenchmarkPipelined16(b *testing.B) {
	run := exchangeLoop(b, bytes.Repeat(benchGet, 16), 16)
	b.ReportAllocs()
	for b.Loop() {
		run()
	}
}

func TestKeepAliveGetAllocatesNothing(t *testing.T) {
	run := exchangeLoop(t, benchGet, 1)
	run() // the first response grows the handler's body buffer
	if allocs := testing.AllocsPerRun(1000, run); allocs != 0 {
		t.Fatalf("%v allocations per keep-alive GET, want 0", allocs)
	}
	run16 := exchangeLoop(t, bytes.Repeat(benchGet, 16), 16)
	run16()
	if allocs := testing.AllocsPerRun(100, run16); allocs != 0 {
		t.Fatalf("%v allocations per 16 pipelined GETs, want 0", allocs)
	}
}
