package netx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// FastListener accepts connections of a TCP or Unix listener with a raw
// accept4(2) on its non-blocking descriptor, waiting through the runtime
// poller only when no connection is queued, and returns them as fastConns
// whose Close releases the socket with raw calls (see closeConn).
//
// Why: net's Accept makes its accept4 and TCP_NODELAY's setsockopt through
// the scheduler's syscall bookkeeping, and for a new connection the accept
// is the first system call after the scheduler thread was idle: it wakes
// the runtime's monitor thread, once per connection (see closeConn for the
// cost). With raw calls a connection per request makes no such call at
// all, apart from the batched close of placeholders.
//
// The returned conns behave as net's: TCP_NODELAY is on for TCP, socket
// options set on the listener (keepalive) are inherited, RemoteAddr and
// LocalAddr are *net.TCPAddr or *net.UnixAddr, deadlines work through the
// runtime poller. Accept is safe for concurrent use; Addr is the wrapped
// listener's.
type FastListener struct {
	net.Listener
	// f is a duplicate of the listener's descriptor as a pollable file: net
	// offers no raw read on a listener, os does on a file.
	f      *os.File
	rc     syscall.RawConn
	unix   bool
	closed atomic.Bool
}

// ListenFast returns ln as a FastListener when it is a TCP or Unix
// listener, else ln. The FastListener owns ln.
func ListenFast(ln net.Listener) net.Listener {
	var f *os.File
	var err error
	switch l := ln.(type) {
	case *net.TCPListener:
		f, err = l.File()
	case *net.UnixListener:
		f, err = l.File()
	default:
		return ln
	}
	if err != nil {
		return ln
	}
	rc, err := pollable(f)
	if err != nil {
		f.Close()
		return ln
	}
	_, unix := ln.(*net.UnixListener)
	makePlaceholder() // before the first connection closes (close.go)
	return &FastListener{Listener: ln, f: f, rc: rc, unix: unix}
}

// Close stops the listener; a blocked Accept returns net.ErrClosed.
func (l *FastListener) Close() error {
	l.closed.Store(true)
	l.f.Close()
	return l.Listener.Close()
}

// acceptOp is one accept4(2): its result and the peer's address.
type acceptOp struct {
	fd    int
	errno syscall.Errno
	sa    syscall.RawSockaddrAny
}

// Accept waits for and returns the next connection. It returns an error
// matching net.ErrClosed once the listener is closed.
func (l *FastListener) Accept() (net.Conn, error) {
	var op acceptOp
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			salen := uint32(unsafe.Sizeof(op.sa))
			r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&op.sa)),
				uintptr(unsafe.Pointer(&salen)), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
			switch e {
			case syscall.EINTR, syscall.ECONNABORTED:
				continue // as net: a connection reset while queued is skipped
			case syscall.EAGAIN:
				return false
			}
			op.fd, op.errno = int(r), e
			return true
		}
	})
	switch {
	case l.closed.Load():
		if err == nil && op.errno == 0 {
			syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(op.fd), 0, 0)
		}
		return nil, l.opError(net.ErrClosed)
	case err != nil:
		return nil, l.opError(err)
	case op.errno != 0:
		return nil, l.opError(os.NewSyscallError("accept4", op.errno))
	}
	return l.newConn(op.fd, &op.sa)
}

func (l *FastListener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: err}
}

// newConn registers the accepted descriptor fd with the runtime poller
// and wraps it; it closes fd when that fails (the poller out of memory).
func (l *FastListener) newConn(fd int, sa *syscall.RawSockaddrAny) (net.Conn, error) {
	var remote net.Addr
	if l.unix {
		remote = &net.UnixAddr{Net: "unix"} // an unnamed client socket, as net reports it
	} else {
		// As net, ignoring a failure: it can only mean the connection is
		// already gone, which its first read reports.
		one := int32(1)
		syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY,
			uintptr(unsafe.Pointer(&one)), 4, 0)
		remote = tcpAddr(sa)
	}
	f := os.NewFile(uintptr(fd), "")
	rc, err := pollable(f)
	if err != nil {
		f.Close()
		return nil, l.opError(err)
	}
	fc := &fileConn{f: f, local: l.Addr(), remote: remote}
	return wrap(fc, rc), nil
}

// pollable returns f's raw connection when the runtime poller holds f:
// a raw call on a descriptor it does not hold could block the scheduler
// thread, so the caller must not use f otherwise.
func pollable(f *os.File) (syscall.RawConn, error) {
	// Only a descriptor in the poller takes deadlines.
	if err := f.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("socket not in the runtime poller: %w", err)
	}
	return f.SyscallConn()
}

// tcpAddr converts an IPv4 or IPv6 socket address.
func tcpAddr(sa *syscall.RawSockaddrAny) net.Addr {
	switch sa.Addr.Family {
	case syscall.AF_INET:
		a := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&a.Port))
		return &net.TCPAddr{IP: net.IPv4(a.Addr[0], a.Addr[1], a.Addr[2], a.Addr[3]), Port: int(p[0])<<8 | int(p[1])}
	case syscall.AF_INET6:
		a := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&a.Port))
		ip := make(net.IP, net.IPv6len)
		copy(ip, a.Addr[:])
		var zone string
		if a.Scope_id != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.Scope_id)); err == nil {
				zone = ifi.Name
			}
		}
		return &net.TCPAddr{IP: ip, Port: int(p[0])<<8 | int(p[1]), Zone: zone}
	}
	return &net.TCPAddr{}
}

// fileConn is an accepted socket held as a pollable *os.File: reads and
// writes go through fastConn, the rest through the file.
type fileConn struct {
	f             *os.File
	local, remote net.Addr
}

var errFileConnIO = errors.New("netx: fileConn reads and writes go through fastConn")

func (c *fileConn) Read([]byte) (int, error)           { return 0, errFileConnIO }
func (c *fileConn) Write([]byte) (int, error)          { return 0, errFileConnIO }
func (c *fileConn) Close() error                       { return c.f.Close() }
func (c *fileConn) LocalAddr() net.Addr                { return c.local }
func (c *fileConn) RemoteAddr() net.Addr               { return c.remote }
func (c *fileConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *fileConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *fileConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }
