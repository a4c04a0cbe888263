package hellomux

// Allocations per keep-alive request of the same http.ServeMux under
// net/http's server, procpool through child/nethttp and fasthttp through
// fasthttpadaptor, all in this process on loopback, driven by a raw client
// that allocates nothing per request: allocs/op is the server's.
//
//	cd scripts/peers && go test -run '^$' -bench . -benchmem ./hellomux

import (
	"bytes"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/procpool/procpool/child"
	"github.com/procpool/procpool/child/nethttp"
	"github.com/procpool/procpool/ipc"
	"github.com/procpool/procpool/master"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"golang.org/x/sys/unix"
)

// request is what wrk sends.
var request = []byte("GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")

// drive sends b.N requests on nc, one at a time, and reads each answer.
func drive(b *testing.B, nc net.Conn) {
	buf := make([]byte, 4096)
	roundTrip := func() {
		if _, err := nc.Write(request); err != nil {
			b.Fatal(err)
		}
		got := 0
		for {
			n, err := nc.Read(buf[got:])
			if err != nil {
				b.Fatal(err)
			}
			got += n
			if bytes.HasSuffix(buf[:got], []byte("Hello World")) {
				return
			}
		}
	}
	roundTrip() // warm: buffers, pools, the first connection's state
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		roundTrip()
	}
}

// driveServer runs serve on a loopback listener and drives it over one
// connection; stop ends it.
func driveServer(b *testing.B, serve func(net.Listener) error, stop func() error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go serve(ln)
	defer stop()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	drive(b, nc)
}

func BenchmarkNetHTTP(b *testing.B) {
	srv := &http.Server{Handler: New()}
	driveServer(b, srv.Serve, srv.Close)
}

func BenchmarkFasthttpAdaptor(b *testing.B) {
	srv := &fasthttp.Server{Handler: fasthttpadaptor.NewFastHTTPHandler(New())}
	driveServer(b, srv.Serve, srv.Shutdown)
}

// BenchmarkProcpoolNetHTTP runs a child's loop (pool mode, as the adapter
// always is) in this process, the benchmark being its master.
func BenchmarkProcpoolNetHTTP(b *testing.B) {
	m, c, err := ipc.Pair()
	if err != nil {
		b.Fatal(err)
	}
	ch := ipc.NewChannel(m)
	done := make(chan error, 1)
	go func() {
		done <- child.Run(child.Config{Channel: c, Listener: -1}, nethttp.Handler(New()))
	}()
	defer func() {
		ch.Close()
		<-done
		unix.Close(c)
	}()
	for deadline := time.Now().Add(5 * time.Second); ; {
		msg, _, err := ch.Recv(nil)
		if err == nil && msg.Cmd == ipc.CmdReady {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("child not ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	lfd, err := master.Listen("127.0.0.1:0", 8, false)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(lfd)
	unix.SetNonblock(lfd, false) // the accept below waits for the dial
	sa, _ := unix.Getsockname(lfd)
	nc, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	fd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Send(ipc.Msg{Cmd: ipc.CmdFds}, []int{fd}); err != nil {
		b.Fatal(err)
	}
	unix.Close(fd)
	drive(b, nc)
}
