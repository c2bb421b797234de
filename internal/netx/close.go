package netx

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Closing a socket that the runtime poller holds is a close(2) through the
// scheduler's syscall bookkeeping, which wakes the runtime's monitor thread
// (sysmon) when it sleeps, as it does whenever the sidecar's one scheduler
// thread has had nothing to run; a woken sysmon then polls every 20 µs
// until the process is idle again. With a connection per request that was
// a wake-up per connection (with net's accept4, see FastListener), and in
// a virtual machine each costs several microseconds of timer and context
// switch: a tenth of a new connection's CPU.
//
// fastConn.Close therefore releases the socket at once with raw system
// calls: the process's placeholder, one unconnected socket, is duplicated
// in place of the descriptor (dup3(2), which closes the connection exactly
// as close(2) would: the peer sees EOF, unsent data is still sent), and
// the descriptor, now a reference to the placeholder that nothing waits
// on, is closed through the poller later, together with the others of the
// last closeBatchDelay. Sharing one placeholder costs a dup3 per
// connection; a fresh socket each time cost 4.2 µs more (creating and
// finally closing it), about 3 % of a new connection's CPU.

// closeBatchDelay is how long a released socket's placeholder waits to be
// closed. It bounds how long its descriptor number stays taken.
const closeBatchDelay = 5 * time.Millisecond

// batchCloser closes placeholders in batches: one timer, and so at most
// one sysmon wake-up, per closeBatchDelay.
type batchCloser struct {
	mu      sync.Mutex
	pending []io.Closer
	armed   bool
}

var placeholders batchCloser

// add queues c to be closed within closeBatchDelay.
func (b *batchCloser) add(c io.Closer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = append(b.pending, c)
	if !b.armed {
		b.armed = true
		time.AfterFunc(closeBatchDelay, b.flush)
	}
}

// flush closes what is queued.
func (b *batchCloser) flush() {
	b.mu.Lock()
	cs := b.pending
	b.pending, b.armed = nil, false
	b.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

// placeholder is the descriptor of the process's placeholder socket, made
// once (makePlaceholder) and never closed; -1 when it could not be made.
var placeholder = struct {
	once sync.Once
	fd   int
}{fd: -1}

// makePlaceholder makes the placeholder socket, once; ListenFast and
// WrapFast call it, so that it exists before the first release. Safe for
// concurrent use.
func makePlaceholder() int {
	placeholder.once.Do(func() {
		fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_UNIX,
			syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if e == 0 {
			placeholder.fd = int(fd)
		}
	})
	return placeholder.fd
}

// release puts the placeholder socket in place of the descriptor of rc
// with a raw system call, which closes the connection. It reports whether
// it did; if not, the descriptor is untouched.
func release(rc syscall.RawConn) bool {
	ph := makePlaceholder()
	if ph < 0 {
		return false
	}
	released := false
	err := rc.Control(func(fd uintptr) {
		_, _, e := syscall.RawSyscall(syscall.SYS_DUP3, uintptr(ph), fd, syscall.O_CLOEXEC)
		released = e == 0
	})
	return err == nil && released
}

// closeConn closes c, whose raw connection is rc, as described above;
// it falls back to c.Close when the socket cannot be released.
func closeConn(c net.Conn, rc syscall.RawConn) error {
	// Wake whoever waits on the socket: their calls fail, which fastConn
	// reports as net.ErrClosed.
	_ = c.SetDeadline(time.Unix(1, 0))
	if !release(rc) {
		return c.Close()
	}
	placeholders.add(c)
	return nil
}
