package faultnet

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Relay forwards connections from its listener to a target. All methods
// are safe for concurrent use; Close is idempotent.
type Relay struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	gate   chan struct{} // closed while forwarding, open while paused
	delay  time.Duration
	pairs  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup
}

// pair is one relayed connection: the client's side and the target's.
type pair struct {
	client net.Conn
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	server net.Conn // nil until dialled
}

func (p *pair) close() {
	p.once.Do(func() {
		close(p.done)
		p.client.Close()
		p.mu.Lock()
		if p.server != nil {
			p.server.Close()
		}
		p.mu.Unlock()
	})
}

// setServer records the target's side; false (and s closed) when the
// pair ended meanwhile.
func (p *pair) setServer(s net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		s.Close()
		return false
	default:
	}
	p.server = s
	return true
}

// New starts a relay to target (host:port) on a free port of 127.0.0.1.
func New(target string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gate := make(chan struct{})
	close(gate)
	r := &Relay{ln: ln, target: target, gate: gate, pairs: map[*pair]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the relay's listening address, host:port.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Port is the relay's listening port.
func (r *Relay) Port() int { return r.ln.Addr().(*net.TCPAddr).Port }

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

// serve connects c to the target (once the relay forwards: a paused
// relay leaves new connections unanswered too) and copies both ways.
func (r *Relay) serve(c net.Conn) {
	defer r.wg.Done()
	p := &pair{client: c, done: make(chan struct{})}
	if !r.add(p) {
		c.Close()
		return
	}
	defer r.remove(p)
	if !r.wait(p) {
		return
	}
	s, err := net.DialTimeout("tcp", r.target, 5*time.Second)
	if err != nil {
		p.close()
		return
	}
	if !p.setServer(s) {
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.copy(p, s, c) }()
	go func() { defer wg.Done(); r.copy(p, c, s) }()
	wg.Wait()
}

func (r *Relay) add(p *pair) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.pairs[p] = struct{}{}
	return true
}

func (r *Relay) remove(p *pair) {
	p.close()
	r.mu.Lock()
	delete(r.pairs, p)
	r.mu.Unlock()
}

// wait blocks while the relay is paused; false when p ended meanwhile.
func (r *Relay) wait(p *pair) bool {
	r.mu.Lock()
	gate, d := r.gate, r.delay
	r.mu.Unlock()
	select {
	case <-gate:
	case <-p.done:
		return false
	}
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.done:
			return false
		}
	}
	return true
}

// copy forwards src to dst chunk by chunk, holding each chunk while the
// relay is paused and for the delay, until src ends (then dst's write
// side is shut, the other direction may go on) or either side fails
// (then the pair is closed).
func (r *Relay) copy(p *pair, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !r.wait(p) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				p.close()
				return
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
				return
			}
		}
		if err != nil {
			p.close()
			return
		}
	}
}

// Pause stops forwarding in both directions and for new connections,
// keeping every socket open: the target looks like a host whose packets
// are dropped. Data read meanwhile is held, not lost.
func (r *Relay) Pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.gate:
		r.gate = make(chan struct{})
	default: // already paused
	}
}

// Resume forwards again, the held data first.
func (r *Relay) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.gate:
	default:
		close(r.gate)
	}
}

// SetDelay holds every chunk of data (and every new connection) for d
// before forwarding it; 0 removes the delay.
func (r *Relay) SetDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

// Reset ends every current connection with a TCP reset on both sides;
// new connections are relayed as before.
func (r *Relay) Reset() {
	r.mu.Lock()
	pairs := make([]*pair, 0, len(r.pairs))
	for p := range r.pairs {
		pairs = append(pairs, p)
		p.mu.Lock()
		for _, c := range []net.Conn{p.client, p.server} {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
		p.mu.Unlock()
	}
	r.mu.Unlock()
	for _, p := range pairs {
		p.close()
	}
}

// Conns is the number of connections the relay holds now.
func (r *Relay) Conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pairs)
}

// Close stops the listener, closes every connection and waits for the
// relay's goroutines to end. Idempotent.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	pairs := make([]*pair, 0, len(r.pairs))
	for p := range r.pairs {
		pairs = append(pairs, p)
	}
	r.mu.Unlock()
	err := r.ln.Close()
	for _, p := range pairs {
		p.close()
	}
	r.wg.Wait()
	return err
}
