package main

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/brownie/brownie-sidecar/internal/wire"
)

// refTxLoop is the transaction-mode reference relay: the least a Go
// transaction pooler can be, on go-loop's design. One goroutine serves
// every client and a fixed pool of upstream connections from one
// level-triggered epoll set. A client's whole messages go to the
// connection it holds, or to an idle one it takes; the connection goes
// back to the pool (or to the longest-waiting client) when the server's
// ReadyForQuery says idle, as PgBouncer's pool_mode = transaction does.
// Only the message framing is read, to find that ReadyForQuery and the
// client's Terminate. The pool is dialled for the first client with its
// StartupMessage, and every client gets the first connection's greeting.
//
// Not for production: no timeouts, no cancel, no settings or prepared
// statements across transactions, and a client that leaves mid-transaction
// costs the pool its connection.
const refTxLoop = "go-txloop"

// txPool is go-txloop: the pool, the loop and the greeting. upstream, cfg
// and size are fixed; init sets err, greeting, ups and set once, before
// any client reaches the loop; byFD, idle, waiting and buf belong to the
// loop goroutine.
type txPool struct {
	upstream string
	cfg      *tls.Config
	size     int

	init     sync.Once
	err      error  // from init
	greeting []byte // AuthenticationOk, the first connection's ParameterStatus, ReadyForQuery
	ups      []*txUp

	set     *epollSet
	pending chan *txClient
	byFD    map[int]any // *txClient or *txUp
	idle    []*txUp
	waiting []*txClient // oldest first
	buf     []byte

	pid atomic.Uint32 // the last BackendKeyData pid handed out
}

// txClient is one client of go-txloop.
type txClient struct {
	conn   net.Conn
	fd     int
	in     []byte // read, not yet forwarded: whole messages go at once
	up     *txUp  // the connection held, nil between transactions
	ending bool   // Terminate received: close once no connection is held
	queued bool   // in txPool.waiting
}

// txUp is one pooled upstream connection and the framing of its stream.
type txUp struct {
	raw    net.Conn
	tls    *tls.Conn
	nb     *nbConn
	client *txClient
	hdr    [5]byte
	hdrN   int  // header bytes of the current message read (5: in its body)
	remain int  // body bytes of the current message not yet read
	idleZ  bool // the last message completed was ReadyForQuery 'I'
}

func newTxPool(upstream string, cfg *tls.Config, size int) *txPool {
	return &txPool{upstream: upstream, cfg: cfg, size: max(size, 1), pending: make(chan *txClient, 256),
		byFD: map[int]any{}, buf: make([]byte, 32<<10)}
}

// serve takes one client through startup (dialling the pool for the first)
// and hands it to the loop.
func (p *txPool) serve(c net.Conn) error {
	startup, err := refReadStartup(c)
	if err != nil {
		c.Close()
		return err
	}
	p.init.Do(func() { p.err = p.start(startup) })
	if p.err != nil {
		c.Close()
		return p.err
	}
	pid := p.pid.Add(1)
	// The greeting with this client's BackendKeyData (secret key 0: no
	// cancel) before its ReadyForQuery, the last 6 bytes.
	ready := len(p.greeting) - 6
	greet := wire.AppendHeader(append([]byte(nil), p.greeting[:ready]...), 'K', 8)
	greet = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(greet, pid), 0)
	greet = append(greet, p.greeting[ready:]...)
	if _, err := c.Write(greet); err != nil {
		c.Close()
		return err
	}
	fd, err := rawFD(c)
	if err != nil {
		c.Close()
		return err
	}
	p.pending <- &txClient{conn: c, fd: fd}
	p.set.notify()
	return nil
}

// start dials the pool with the first client's StartupMessage, keeps the
// first connection's greeting and starts the loop.
func (p *txPool) start(startup []byte) error {
	for range p.size {
		u, greeting, err := p.dial(startup)
		if err != nil {
			return err // stop closes those dialled
		}
		if p.greeting == nil {
			p.greeting = greeting
		}
		p.ups = append(p.ups, u)
	}
	set, err := newEpollSet()
	if err != nil {
		return err
	}
	for _, u := range p.ups {
		if err := set.watch(u.nb.fd); err != nil {
			set.close(false)
			return err
		}
		p.byFD[u.nb.fd] = u
		p.idle = append(p.idle, u)
	}
	p.set = set
	go set.run(p.admit, p.ready, func() {
		for _, v := range p.byFD {
			switch v := v.(type) {
			case *txClient:
				v.conn.Close()
			case *txUp:
				v.raw.Close()
			}
		}
	})
	return nil
}

// dial opens one upstream connection through its startup, returning the
// greeting a client gets: AuthenticationOk, the server's ParameterStatus
// messages and ReadyForQuery (BackendKeyData goes in per client).
func (p *txPool) dial(startup []byte) (*txUp, []byte, error) {
	raw, sw, up, err := refDial(p.upstream, p.cfg, startup)
	if err != nil {
		return nil, nil, err
	}
	greeting := wire.AppendHeader(nil, 'R', 4)
	greeting = binary.BigEndian.AppendUint32(greeting, 0) // AuthenticationOk
	r := wire.NewReader(up, 4096)
	for {
		typ, _, err := r.Next()
		if err != nil {
			raw.Close()
			return nil, nil, err
		}
		body, err := r.Body()
		if err != nil {
			raw.Close()
			return nil, nil, err
		}
		switch typ {
		case 'E':
			raw.Close()
			return nil, nil, fmt.Errorf("server refused the startup: %q", body)
		case 'S':
			greeting = append(wire.AppendHeader(greeting, 'S', len(body)), body...)
		case 'Z':
			greeting = append(wire.AppendHeader(greeting, 'Z', 1), 'I')
			if r.Buffered() > 0 {
				raw.Close()
				return nil, nil, errors.New("server sent more after its first ReadyForQuery")
			}
			fd, err := rawFD(raw)
			if err != nil {
				raw.Close()
				return nil, nil, err
			}
			sw.nb = &nbConn{fd: fd}
			return &txUp{raw: raw, tls: up, nb: sw.nb}, greeting, nil
		}
	}
}

// stop ends the loop and closes every client and connection. Call once,
// after the last serve.
func (p *txPool) stop() {
	if p.set == nil {
		for _, u := range p.ups { // a start that failed after dialling
			u.raw.Close()
		}
		return
	}
	p.set.close(true)
	for len(p.pending) > 0 {
		(<-p.pending).conn.Close()
	}
}

func (p *txPool) ready(fd int) {
	switch v := p.byFD[fd].(type) {
	case *txClient:
		p.fromClient(v, p.buf)
	case *txUp:
		p.fromServer(v, p.buf)
	}
}

func (p *txPool) admit() {
	for {
		select {
		case c := <-p.pending:
			p.byFD[c.fd] = c
			if err := p.set.watch(c.fd); err != nil {
				p.dropClient(c)
			}
		default:
			return
		}
	}
}

func (p *txPool) fromClient(c *txClient, buf []byte) {
	n, err := rawRead(c.fd, buf)
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return
	case err != nil || n == 0:
		p.dropClient(c)
		return
	}
	c.in = append(c.in, buf[:n]...)
	p.pump(c)
}

// pump forwards c's whole messages to the connection it holds, taking an
// idle one (or queueing c) first.
func (p *txPool) pump(c *txClient) {
	whole := 0
	for len(c.in)-whole >= 5 {
		size := 1 + int(binary.BigEndian.Uint32(c.in[whole+1:]))
		if len(c.in)-whole < size {
			break
		}
		if c.in[whole] == 'X' {
			c.ending, c.in = true, c.in[:whole]
			break
		}
		whole += size
	}
	if whole > 0 && c.up == nil {
		if len(p.idle) == 0 {
			if !c.queued {
				c.queued = true
				p.waiting = append(p.waiting, c)
			}
			return
		}
		u := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		u.client, c.up = c, u
	}
	if whole > 0 {
		if _, err := c.up.tls.Write(c.in[:whole]); err != nil {
			p.dropUp(c.up)
			p.dropClient(c)
			return
		}
		c.in = c.in[:copy(c.in, c.in[whole:])]
	}
	if c.ending && c.up == nil {
		p.dropClient(c)
	}
}

func (p *txPool) fromServer(u *txUp, buf []byte) {
	u.nb.ready = true
	for {
		n, err := u.tls.Read(buf)
		if n > 0 {
			if c := u.client; c != nil && rawWriteAll(c.fd, buf[:n]) != nil {
				p.dropClient(c) // the rest of the answer is read and dropped
			}
			if u.frame(buf[:n]) {
				p.release(u)
			}
		}
		if errors.Is(err, errWouldBlock) {
			return
		}
		if err != nil {
			p.dropUp(u)
			return
		}
	}
}

// frame follows u's message framing over p and reports whether p ends
// with a whole ReadyForQuery saying idle.
func (u *txUp) frame(p []byte) bool {
	for len(p) > 0 {
		if u.hdrN < 5 {
			k := copy(u.hdr[u.hdrN:], p)
			u.hdrN += k
			p = p[k:]
			if u.hdrN < 5 {
				break
			}
			u.idleZ = false
			if u.remain = int(binary.BigEndian.Uint32(u.hdr[1:])) - 4; u.remain <= 0 {
				u.hdrN, u.remain = 0, 0
			}
			continue
		}
		k := min(u.remain, len(p))
		if u.hdr[0] == 'Z' {
			u.idleZ = p[0] == 'I'
		}
		u.remain -= k
		p = p[k:]
		if u.remain == 0 {
			u.hdrN = 0
		}
	}
	return u.idleZ && u.hdrN == 0
}

// release takes u from the client it served and gives it to the oldest
// waiting client, or makes it idle.
func (p *txPool) release(u *txUp) {
	if c := u.client; c != nil {
		c.up, u.client = nil, nil
		if c.ending {
			p.dropClient(c)
		}
	}
	for len(p.waiting) > 0 {
		c := p.waiting[0]
		p.waiting = p.waiting[1:]
		c.queued = false
		if p.byFD[c.fd] != any(c) {
			continue // it left while waiting
		}
		u.client, c.up = c, u
		p.pump(c)
		return
	}
	p.idle = append(p.idle, u)
}

func (p *txPool) dropClient(c *txClient) {
	if p.byFD[c.fd] == any(c) {
		p.set.unwatch(c.fd)
		delete(p.byFD, c.fd)
	}
	if u := c.up; u != nil {
		u.client, c.up = nil, nil // it serves the transaction to its end, unheard
	}
	c.conn.Close()
}

func (p *txPool) dropUp(u *txUp) {
	if p.byFD[u.nb.fd] == any(u) {
		p.set.unwatch(u.nb.fd)
		delete(p.byFD, u.nb.fd)
	}
	if c := u.client; c != nil {
		c.up, u.client = nil, nil
	}
	u.raw.Close()
}
