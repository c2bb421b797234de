package netx

import (
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
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
// Deadlines and addresses are the wrapped conn's; Close releases the
// socket with raw calls too (see closeConn). Safe for the same concurrent
// use as the wrapped conn: one reader and one writer at a time, Close
// from any goroutine.
type fastConn struct {
	net.Conn
	rc syscall.RawConn
	// rd and wr hold one read's and one write's arguments and results
	// (one reader and one writer at a time); readFn and writeFn are their
	// methods, bound once, so a call allocates no closure.
	rd, wr          rawOp
	readFn, writeFn func(fd uintptr) bool
	// closed is set by Close; from then on every call fails with
	// net.ErrClosed, as on a closed net.Conn.
	closed atomic.Bool
	// holding and held are HoldWrites' state (awaitconn.go), owned by the
	// writer until AwaitAnswer, SendHeld or Read sends held; await and
	// awaitFn are AwaitAnswer's write and its read callback, bound once
	// as readFn is.
	holding bool
	held    []byte
	await   awaitOp
	awaitFn func(fd uintptr) bool
	// wseq counts the writes begun, each before its first system call;
	// drained says the last read returned less than it asked for
	// (reader only). See QuietReader.
	wseq    writeSeq
	drained bool
}

// rawOp is one raw read or write on the descriptor.
type rawOp struct {
	p     []byte
	n     int
	errno syscall.Errno
	// For a read: skip its first try while *wseq is seq (SkipIdleRead).
	skip bool
	seq  uint64
	wseq *writeSeq
}

// read reads once into o.p; it reports false (wait for the poller) when
// the socket has no data, or, on a skipped first try, without reading.
func (o *rawOp) read(fd uintptr) bool {
	if o.skip {
		o.skip = false
		if o.wseq.Load() == o.seq {
			return false
		}
	}
	n, e := RawRead(fd, o.p)
	if e == syscall.EAGAIN {
		return false
	}
	o.n, o.errno = n, e
	return true
}

// write writes what is left of o.p; it reports false (wait for the
// poller) when the socket buffer is full.
func (o *rawOp) write(fd uintptr) bool {
	for o.n < len(o.p) {
		n, e := RawWrite(fd, o.p[o.n:])
		switch e {
		case 0:
			o.n += n
		case syscall.EAGAIN:
			return false
		default:
			o.errno = e
			return true
		}
	}
	return true
}

// RawRead is one read(2) of the descriptor fd into p (not empty) as a raw
// system call, retried on EINTR: on a non-blocking socket it never blocks,
// so it needs none of the scheduler's bookkeeping (see fastConn). The count
// is meaningless when the errno is not 0 (EAGAIN: no data yet).
func RawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// RawWrite is one write(2) of p (not empty) to fd, as RawRead; it may
// write less than p, and EAGAIN means the socket buffer is full.
func RawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// WrapFast returns c as a fastConn when it is a TCP or Unix socket, else c.
func WrapFast(c net.Conn) net.Conn {
	if _, ok := c.(*fastConn); ok {
		return c
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return wrap(c, rc)
}

// wrap returns c, whose raw connection is rc, as a fastConn.
func wrap(c net.Conn, rc syscall.RawConn) *fastConn {
	makePlaceholder()
	fc := &fastConn{Conn: c, rc: rc}
	fc.readFn, fc.writeFn, fc.awaitFn = fc.rd.read, fc.wr.write, fc.await.run
	return fc
}

// SyscallConn returns the wrapped socket's raw connection (for control
// operations on its descriptor, such as watching it for readability).
func (c *fastConn) SyscallConn() (syscall.RawConn, error) {
	if c.closed.Load() {
		return nil, net.ErrClosed
	}
	return c.rc, nil
}

// Close closes the connection: the peer sees it closed when Close
// returns, and calls blocked on it return net.ErrClosed. See closeConn
// for how. Safe to call concurrently with Read and Write; a second Close
// fails with net.ErrClosed.
func (c *fastConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return c.opError("close", net.ErrClosed)
	}
	return closeConn(c.Conn, c.rc)
}

// SetDeadline, SetReadDeadline and SetWriteDeadline are the wrapped
// conn's, and fail with net.ErrClosed after Close.
func (c *fastConn) SetDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	return c.Conn.SetDeadline(t)
}

func (c *fastConn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *fastConn) SetWriteDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *fastConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Read reads into p, waiting for data when none is there.
func (c *fastConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.holding {
		if err := c.SendHeld(); err != nil {
			return 0, err
		}
	}
	c.rd = rawOp{p: p, skip: c.rd.skip, seq: c.rd.seq, wseq: &c.wseq}
	err := c.rc.Read(c.readFn)
	n, errno := c.rd.n, c.rd.errno
	c.rd.p, c.rd.skip = nil, false // do not keep the caller's buffer
	c.drained = err == nil && errno == 0 && n > 0 && n < len(p)
	if c.closed.Load() {
		err, errno = net.ErrClosed, 0
	}
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
	if c.holding {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	c.wr = rawOp{p: p}
	c.wseq.Add(1)
	err := c.rc.Write(c.writeFn)
	n, errno := c.wr.n, c.wr.errno
	c.wr.p = nil
	if c.closed.Load() {
		err, errno = net.ErrClosed, 0
	}
	switch {
	case err != nil:
		return n, &net.OpError{Op: "write", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", errno)}
	}
	return n, nil
}
