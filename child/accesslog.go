package child

import (
	"net/netip"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// AccessLog is a file that children append combined-format lines to. Each
// session buffers its own lines and writes them in blocks; the file is
// opened with O_APPEND, so blocks from several children and workers never
// interleave inside a line. Reopen keeps the fd number and swaps the file
// under it with dup3, so a writer never sees a closed or reused fd.
type AccessLog struct {
	path string
	fd   int
}

// OpenAccessLog opens path for appending. A symbolic link is refused
// (ELOOP): a link planted in a writable directory must not make the child
// append to its target.
func OpenAccessLog(path string) (*AccessLog, error) {
	fd, err := openLog(path)
	if err != nil {
		return nil, err
	}
	return &AccessLog{path: path, fd: fd}, nil
}

func openLog(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// Reopen points the log at a fresh file of the same path (after rotation).
func (a *AccessLog) Reopen() error {
	fd, err := openLog(a.path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Dup3(fd, a.fd, unix.O_CLOEXEC)
}

const (
	logFlushSize  = 32 << 10
	logFlushEvery = time.Second
)

// logBuf is one session's pending lines.
type logBuf struct {
	file    *AccessLog
	buf     []byte
	stamp   []byte // "[25/Nov/2026:03:10:00 +0000]", reformatted once a second
	sec     int64
	flushed time.Time
}

func newLogBuf(f *AccessLog) *logBuf {
	if f == nil {
		return nil
	}
	return &logBuf{file: f, buf: make([]byte, 0, logFlushSize+4096)}
}

// add appends the line for one answered request; size is the body that
// went out (for a refused request, the error text).
func (l *logBuf) add(now time.Time, peer netip.Addr, r *Request, status, size int) {
	if s := now.Unix(); s != l.sec {
		l.sec = s
		l.stamp = now.AppendFormat(append(l.stamp[:0], '['), "02/Jan/2006:15:04:05 -0700")
		l.stamp = append(l.stamp, ']')
	}
	b := l.buf
	if peer.IsValid() {
		b = peer.AppendTo(b)
	} else {
		b = append(b, '-')
	}
	b = append(b, " - - "...)
	b = append(b, l.stamp...)
	// The request line as the client sent it: for a request that was
	// refused, what it asked for, version included; "-" when the line never
	// came whole (or was over its limit).
	b = append(b, " \""...)
	if len(r.line) > 0 {
		b = appendEscaped(b, r.line)
	} else {
		b = append(b, '-')
	}
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	if size > 0 {
		b = strconv.AppendInt(b, int64(size), 10)
	} else {
		b = append(b, '-')
	}
	b = appendQuoted(b, r.Header("Referer"))
	b = appendQuoted(b, r.Header("User-Agent"))
	l.buf = append(b, '\n')
	if len(l.buf) >= logFlushSize {
		l.flush(now)
	}
}

// tick writes what is pending once it is a second old.
func (l *logBuf) tick(now time.Time) {
	if len(l.buf) > 0 && now.Sub(l.flushed) >= logFlushEvery {
		l.flush(now)
	}
}

// flush writes the pending lines. A log that cannot be written loses lines,
// never requests: errors are dropped on purpose.
func (l *logBuf) flush(now time.Time) {
	for b := l.buf; len(b) > 0; {
		n, err := unix.Write(l.file.fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		b = b[n:]
	}
	l.buf = l.buf[:0]
	l.flushed = now
}

func appendQuoted(b, v []byte) []byte {
	b = append(b, " \""...)
	if len(v) == 0 {
		b = append(b, '-')
	} else {
		b = appendEscaped(b, v)
	}
	return append(b, '"')
}

// appendEscaped writes v with quotes, backslashes and control bytes as \xHH,
// so that a client cannot forge log lines.
func appendEscaped(b, v []byte) []byte {
	const hex = "0123456789abcdef"
	for _, c := range v {
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			b = append(b, '\\', 'x', hex[c>>4], hex[c&15])
			continue
		}
		b = append(b, c)
	}
	return b
}
