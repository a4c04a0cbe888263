// Package ipc carries everything that crosses between the master and its
// children: the channel socketpair, the fds handed over with SCM_RIGHTS, and the
// self-pipe that turns signals into readable bytes.
//
// # Wire format
//
// A channel is an AF_UNIX SOCK_SEQPACKET socketpair, so the kernel keeps message
// boundaries and a message is delivered whole or not at all. Every message is
// exactly 16 bytes in host byte order:
//
//	offset 0  uint32  command (CmdFds, CmdReady, CmdDrain, CmdPing, CmdDraining, ...)
//	offset 4  int32   pid of the sender
//	offset 8  int32   slot of the child the message concerns
//	offset 12 uint32  argument: for CmdFds, the number of fds attached
//
// File descriptors never travel alone: they ride as one SCM_RIGHTS control
// message on a CmdFds message whose argument states how many there are, at most
// MaxFds (the kernel's SCM_MAX_FD). A receiver that finds a different count,
// a short message or a truncated control block closes every fd that did
// arrive and reports the error, so a broken peer can never leak descriptors
// into it.
//
// Channels are non-blocking: a full channel returns ErrAgain, which is a state
// the caller routes around (the master tries the next child), not a failure.
package ipc
