package epoll

// PollsFirst reports whether the next Wait polls before it may sleep.
func (p *Poller) PollsFirst() bool { return p.full }
