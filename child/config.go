package child

import (
	"log/slog"
	"time"

	"github.com/procpool/procpool/ipc"
)

// Timeouts bound how long a connection may hold a child's resources. They are
// enforced by a sweep of the connection table once a second, so they are
// accurate to about a second and cost no timer per connection.
type Timeouts struct {
	Header time.Duration // from the first byte of a request to the end of its headers
	Body   time.Duration // between two reads of a request body
	Idle   time.Duration // a keep-alive connection between requests
	Write  time.Duration // between two writes that make progress
	Linger time.Duration // draining a client after an error status
}

// DefaultTimeouts are what a public-facing server can live with.
var DefaultTimeouts = Timeouts{
	Header: 10 * time.Second,
	Body:   30 * time.Second,
	Idle:   60 * time.Second,
	Write:  30 * time.Second,
	Linger: 5 * time.Second,
}

// Config is what a child needs to run.
type Config struct {
	Channel  int      // fd of the child's end of the channel to the master
	Slot     int      // the child's index in the pool, as the master numbers it
	Listener int      // in reuseport mode the child's own listening socket; 0 or -1 when none
	Pool     int      // worker goroutines for handlers; 0 runs handlers inline
	Limits   Limits   // zero: DefaultLimits; each is clamped to [0, MaxLimits]
	Timeouts Timeouts // zero: DefaultTimeouts
	// Stats is the child's cell of counters in the master's shared region;
	// nil counts into a private cell.
	Stats *ipc.Cell
	// MaxConns is the most connections the child holds at once; in
	// reuseport mode it stops accepting at the limit (the master does the
	// same for it in fdpass mode). 0: no limit.
	MaxConns int
	// AccessLog, when set, receives one combined-format line per request.
	AccessLog *AccessLog
	// Proxy, when set, reads PROXY protocol headers (proxyproto.go).
	Proxy *ProxyConfig
	// Reopen, when set, reopens the child's log files (SIGUSR1 or the
	// master's CmdReopen).
	Reopen func()
	// Log receives the child's own log lines; nil: slog.Default().
	Log *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Limits == (Limits{}) {
		c.Limits = DefaultLimits
	}
	c.Limits = c.Limits.clamp()
	if c.Timeouts == (Timeouts{}) {
		c.Timeouts = DefaultTimeouts
	}
	if c.Stats == nil {
		c.Stats = new(ipc.Cell)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}
