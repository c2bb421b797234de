package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// fastConn issues the reads and writes of a stream socket as raw system
// calls on its non-blocking descriptor, waiting through the runtime
// poller (so deadlines and Close work as for the wrapped conn) only when
// the call would block.
//
// Why: a net.Conn read or write goes through the scheduler's syscall
// bookkeeping (entersyscall/exitsyscall), which wakes the sysmon thread
// whenever it sleeps and lets it retake processors from goroutines in
// short socket calls. For a proxy doing four small socket calls per round
// trip this showed up as futex wake-ups and context switches costing more
// than the calls themselves. A call on a non-blocking socket never blocks,
// so it can safely skip that bookkeeping (the runtime does the same for
// its own short calls).
//
// Everything else (deadlines, addresses, Close) is the wrapped conn's. Safe
// for the same concurrent use as the wrapped conn: one reader and one
// writer at a time.
type fastConn struct {
	net.Conn
	rc syscall.RawConn
}

// wrapFast returns c as a fastConn when it is a TCP or Unix socket, else c.
func wrapFast(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &fastConn{Conn: c, rc: rc}
}

// Read reads into p, waiting for data when none is there.
func (c *fastConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting for room in the socket buffer as needed.
func (c *fastConn) Write(p []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, &net.OpError{Op: "write", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", errno)}
	}
	return n, nil
}
