package master

// What the external tests (package master_test) call of what the package
// keeps to itself.
var (
	LocalAddr   = localAddr
	Reserve     = reserve
	Somaxconn   = somaxconn
	TakePidfile = takePidfile
)

func (p *Pidfile) Release() { p.handOver() }
