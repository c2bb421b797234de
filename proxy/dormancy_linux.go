package proxy

import (
	cryptotls "crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// dormancy holds dormant sessions with no goroutine at all: their client
// sockets are watched by one epoll instance of the server's, and a session
// gets a goroutine again (run) when its client sends something, hangs up,
// or the sidecar closes it (closeClient). It is PgBouncer's event loop for
// the one state where Go's goroutine per connection costs most: waiting.
//
// The Go runtime's own poller keeps the sockets too; watching them from a
// second epoll instance is allowed, and the woken session reads through
// its net.Conn as ever. Safe for concurrent use.
type dormancy struct {
	log *zap.Logger

	mu      sync.Mutex
	started bool
	failed  bool // epoll could not be set up: sessions keep a goroutine
	stopped bool
	epfd    int
	stopR   int // read end of the pipe that stops the loop
	stopW   int
	parked  map[uint64]parked // by session park ID
	nextID  uint64
	done    chan struct{} // closed when the loop has returned
	wake    func(parked)  // starts a woken session's goroutine
}

// parked is a session waiting in dormancy, with the connection its run
// goroutine owns.
type parked struct {
	ss   *session
	conn net.Conn
}

// stopID is the event data of the stop pipe; sessions' IDs start at 1.
const stopID = 0

// park hands ss, just gone dormant, to the loop: its goroutine may end.
// It reports false when the session cannot be watched (not a socket,
// already closed, epoll unavailable); then the caller keeps a goroutine
// for it.
func (d *dormancy) park(ss *session, conn net.Conn) bool {
	rc := rawConnOf(ss.client)
	if rc == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped || !ss.parkable() || !d.startLocked() {
		return false
	}
	if ss.parkID == 0 {
		d.nextID++
		ss.parkID = d.nextID
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setEventID(&ev, ss.parkID)
	var ctlErr error
	// The descriptor is used only inside Control, which holds it open: a
	// closed connection fails here rather than watching a reused number.
	err := rc.Control(func(fd uintptr) {
		op := syscall.EPOLL_CTL_ADD
		if ss.parkWatched {
			op = syscall.EPOLL_CTL_MOD // watched before; one-shot, so disarmed since
		}
		ctlErr = syscall.EpollCtl(d.epfd, op, int(fd), &ev)
		if errors.Is(ctlErr, syscall.ENOENT) && op == syscall.EPOLL_CTL_MOD {
			ctlErr = syscall.EpollCtl(d.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err != nil || ctlErr != nil {
		return false
	}
	ss.parkWatched = true
	d.parked[ss.parkID] = parked{ss: ss, conn: conn}
	return true
}

// unpark takes ss out of dormancy, if it is there, and starts its
// goroutine; called before the sidecar closes the client's connection, so
// that the session's goroutine cleans up. It reports whether ss was parked.
func (d *dormancy) unpark(ss *session) bool {
	d.mu.Lock()
	p, ok := d.parked[ss.parkID]
	if ok {
		delete(d.parked, ss.parkID)
	}
	d.mu.Unlock()
	if ok {
		d.wake(p)
	}
	return ok
}

// startLocked sets up the epoll instance and starts the loop on first use.
// Called with d.mu held.
func (d *dormancy) startLocked() bool {
	if d.started || d.failed {
		return d.started
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		d.failed = true
		d.log.Warn("dormant sessions keep a goroutine: epoll unavailable", zap.Error(err))
		return false
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(epfd)
		d.failed = true
		d.log.Warn("dormant sessions keep a goroutine: pipe unavailable", zap.Error(err))
		return false
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setEventID(&ev, stopID)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(p[0])
		_ = syscall.Close(p[1])
		d.failed = true
		d.log.Warn("dormant sessions keep a goroutine: epoll unavailable", zap.Error(err))
		return false
	}
	d.epfd, d.stopR, d.stopW = epfd, p[0], p[1]
	d.parked = map[uint64]parked{}
	d.done = make(chan struct{})
	d.started = true
	go d.loop()
	return true
}

// loop waits for events on the parked sessions' sockets and wakes them.
func (d *dormancy) loop() {
	defer close(d.done)
	var events [128]syscall.EpollEvent
	for {
		n, err := syscall.EpollWait(d.epfd, events[:], -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			d.log.Error("dormant sessions' poller failed", zap.Error(err))
			d.wakeAll()
			return
		}
		for i := range n {
			id := eventID(&events[i])
			if id == stopID {
				return
			}
			d.mu.Lock()
			p, ok := d.parked[id]
			if ok {
				delete(d.parked, id)
			}
			d.mu.Unlock()
			if ok {
				d.wake(p)
			}
		}
	}
}

// wakeAll wakes every parked session.
func (d *dormancy) wakeAll() {
	d.mu.Lock()
	all := d.parked
	d.parked = map[uint64]parked{}
	d.mu.Unlock()
	for _, p := range all {
		d.wake(p)
	}
}

// stop ends the loop, after the server's sessions have all ended (none is
// parked then; any still there are woken). Idempotent.
func (d *dormancy) stop() {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return
	}
	d.stopped = true
	started := d.started
	d.mu.Unlock()
	if !started {
		return
	}
	_, _ = syscall.Write(d.stopW, []byte{0})
	<-d.done
	d.wakeAll()
	_ = syscall.Close(d.epfd)
	_ = syscall.Close(d.stopR)
	_ = syscall.Close(d.stopW)
}

// rawConnOf returns the raw connection of c's socket, under any TLS
// layer, or nil.
func rawConnOf(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*cryptotls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// setEventID and eventID keep a 64-bit ID in an event's data (its Fd and
// Pad fields, which epoll hands back untouched).
func setEventID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
