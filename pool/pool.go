package pool

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// Resource is an upstream connection as the pool sees it.
type Resource interface {
	// Close releases the resource. It is called exactly once by the pool.
	Close() error
	// Generation is the credential generation (certificate) the resource
	// was created with; resources from older generations are retired.
	Generation() uint64
}

// Checker is implemented by resources that can tell cheaply, without
// blocking, whether they are still usable. Acquire checks idle resources
// that implement it and discards broken ones (for example a server
// connection the server closed while it sat idle).
type Checker interface {
	Alive() bool
}

// Dialer creates a resource. It must honour ctx.
type Dialer[R Resource] func(ctx context.Context) (R, error)

// Config sets a pool's limits. Zero durations disable the matching rule.
type Config struct {
	// Size is the most resources open at once (idle plus in use).
	Size int
	// MinIdle resources are kept open by Run.
	MinIdle int
	// IdleTimeout closes resources idle longer than this (above MinIdle).
	IdleTimeout time.Duration
	// MaxLifetime closes resources older than this, minus a random part
	// of LifetimeJitter so a cohort made together does not expire together.
	MaxLifetime    time.Duration
	LifetimeJitter time.Duration
	// AcquireTimeout bounds the wait in Acquire.
	AcquireTimeout time.Duration
	// CheckDelay is how long a resource must have been idle before Acquire
	// asks its Checker whether it is still alive (0: every time). A
	// resource used a moment ago is almost always still good, and the
	// check is a system call per Acquire (PgBouncer: server_check_delay).
	CheckDelay time.Duration
	// RetireInterval is the least time between two retirements of
	// resources from an old generation, so rotation never closes them all
	// at once.
	RetireInterval time.Duration
	// Generation returns the current credential generation; nil means
	// generations are never compared.
	Generation func() uint64
}

// Errors returned by Acquire.
var (
	// ErrTimeout means no resource became available within AcquireTimeout.
	ErrTimeout = errors.New("timed out waiting for an upstream connection")
	// ErrClosed means the pool was closed.
	ErrClosed = errors.New("pool closed")
)

// Stats is a snapshot of a pool's counters.
type Stats struct {
	Size, Open, Idle, InUse, Waiting int
	Dialing                          int
	Acquires, Waits, Timeouts        uint64
	WaitTime                         time.Duration
	Dials, DialErrors                uint64
	ClosedLifetime, ClosedIdle       uint64
	ClosedRetired, ClosedDestroyed   uint64
	ClosedBroken                     uint64
}

// Pool hands out resources of one target. All methods are safe for
// concurrent use.
type Pool[R Resource] struct {
	cfg  Config
	dial Dialer[R]

	mu      sync.Mutex
	idle    []*Conn[R] // most recently released last
	open    int        // idle + in use + being dialled
	dialing int
	waiters waitQueue[R]
	spare   []*waiter[R] // finished waiters kept for reuse
	// expiry fires at the oldest waiter's deadline (expireWaiters); nil
	// until first needed. expiryArmed says it is set to fire.
	expiry      *time.Timer
	expiryArmed bool
	closed      bool
	stats       Stats
	retired     time.Time // last retirement of an old-generation resource
	doomed      []R       // resources to close once mu is released
}

// Conn is one resource checked out of (or idle in) a pool. A checked-out
// Conn belongs to the caller until it calls exactly one of Release or
// Destroy.
type Conn[R Resource] struct {
	Value    R
	pool     *Pool[R]
	created  time.Time
	expires  time.Time // zero: no lifetime limit
	lastUsed time.Time
}

// Created returns when the resource was opened.
func (c *Conn[R]) Created() time.Time { return c.created }

type grant[R Resource] struct {
	conn *Conn[R] // an idle resource handed over, or
	dial bool     // permission to dial a new one (a slot is reserved)
	err  error
}

// New returns an empty pool. Call Run to enforce idle and lifetime limits
// and MinIdle, and Close when done.
func New[R Resource](cfg Config, dial Dialer[R]) *Pool[R] {
	if cfg.Size < 1 {
		cfg.Size = 1
	}
	p := &Pool[R]{cfg: cfg, dial: dial}
	p.stats.Size = cfg.Size
	return p
}

// Acquire returns a resource, waiting in FIFO order up to AcquireTimeout
// (or until ctx ends) when all are in use. It dials a new one when the pool
// is below Size. Errors are ErrTimeout, ErrClosed, ctx's error or the
// Dialer's error.
func (p *Pool[R]) Acquire(ctx context.Context) (*Conn[R], error) {
	c, _, err := p.acquire(ctx, p.cfg.CheckDelay)
	return c, err
}

// AcquireChecked is Acquire for a caller that will not do I/O on the
// resource soon enough to notice it is dead: an idle resource is checked
// with its Checker however recently it was used.
func (p *Pool[R]) AcquireChecked(ctx context.Context) (*Conn[R], error) {
	c, _, err := p.acquire(ctx, 0)
	return c, err
}

// AcquireTimed is Acquire, or AcquireChecked when checked is true, that
// also returns how long the call took when it had to wait or dial (an
// idle resource at hand: 0), so a caller timing its acquisitions reads
// no clock of its own on the common path.
func (p *Pool[R]) AcquireTimed(ctx context.Context, checked bool) (*Conn[R], time.Duration, error) {
	delay := p.cfg.CheckDelay
	if checked {
		delay = 0
	}
	return p.acquire(ctx, delay)
}

// acquire checks idle resources that were idle at least checkDelay. It
// returns the time it took when it waited or dialled, else 0.
func (p *Pool[R]) acquire(ctx context.Context, checkDelay time.Duration) (*Conn[R], time.Duration, error) {
	start := time.Now()
	p.mu.Lock()
	if p.closed {
		p.unlock()
		return nil, 0, ErrClosed
	}
	p.stats.Acquires++
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if p.expiredLocked(c, start) {
			p.discardLocked(c, &p.stats.ClosedLifetime)
			continue
		}
		if a, ok := any(c.Value).(Checker); ok && start.Sub(c.lastUsed) >= checkDelay && !a.Alive() {
			p.discardLocked(c, &p.stats.ClosedBroken)
			continue
		}
		p.unlock()
		return c, 0, nil
	}
	if p.open < p.cfg.Size {
		p.open++
		p.unlock()
		c, err := p.dialConn(ctx)
		return c, time.Since(start), err
	}
	w := p.takeWaiterLocked()
	if p.cfg.AcquireTimeout > 0 {
		w.deadline = start.Add(p.cfg.AcquireTimeout)
		if last := p.waiters.newest(); last != nil && last.deadline.After(w.deadline) {
			w.deadline = last.deadline // the queue stays in deadline order
		}
		if !p.expiryArmed {
			p.armExpiryLocked(w.deadline)
		}
	}
	p.waiters.push(w)
	p.stats.Waits++
	p.unlock()

	// The wait's timeout is the pool's expiry timer, not one per wait: a
	// timer set and stopped, and a third case in the select, on every wait
	// made BenchmarkContendedAcquire a third slower (700 against 535 ns).
	var g grant[R]
	if done := ctx.Done(); done == nil {
		g = <-w.ch
	} else {
		select {
		case g = <-w.ch:
		case <-done:
			g = p.abandon(w, ctx.Err())
		}
	}
	waited := time.Since(start)
	p.mu.Lock()
	p.stats.WaitTime += waited
	if errors.Is(g.err, ErrTimeout) {
		p.stats.Timeouts++
	}
	p.keepWaiterLocked(w)
	p.unlock()
	switch {
	case g.err != nil:
		return nil, waited, g.err
	case g.dial:
		c, err := p.dialConn(ctx)
		return c, time.Since(start), err
	default:
		return g.conn, waited, nil
	}
}

// abandon removes a waiter that gave up. If a grant raced in, it is passed
// on rather than lost.
func (p *Pool[R]) abandon(w *waiter[R], err error) grant[R] {
	p.mu.Lock()
	defer p.unlock()
	if p.waiters.remove(w) {
		return grant[R]{err: err}
	}
	g := <-w.ch // already granted: hand the grant to the next waiter
	switch {
	case g.conn != nil && p.closed:
		// Close ran after the hand-over and could not see this resource;
		// parking it idle would leak it and its slot.
		p.discardLocked(g.conn, &p.stats.ClosedDestroyed)
	case g.conn != nil:
		p.putLocked(g.conn)
	case g.dial:
		p.freeSlotLocked()
	}
	return grant[R]{err: err}
}

// armExpiryLocked sets the expiry timer to fire at deadline.
func (p *Pool[R]) armExpiryLocked(deadline time.Time) {
	d := time.Until(deadline)
	if p.expiry == nil {
		p.expiry = time.AfterFunc(d, p.expireWaiters)
	} else {
		p.expiry.Reset(d)
	}
	p.expiryArmed = true
}

// expireWaiters is the expiry timer's function: it ends, with ErrTimeout,
// the waits whose deadline has passed (the oldest waiters: the queue is in
// deadline order), then sets the timer for the next deadline, if any. A
// timer set for a waiter that got a resource meanwhile fires early,
// expires nothing and is set again.
func (p *Pool[R]) expireWaiters() {
	p.mu.Lock()
	defer p.unlock()
	p.expiryArmed = false
	if p.closed {
		return
	}
	now := time.Now()
	for w := p.waiters.oldest(); w != nil && !w.deadline.After(now); w = p.waiters.oldest() {
		p.waiters.remove(w)
		w.ch <- grant[R]{err: ErrTimeout}
	}
	if w := p.waiters.oldest(); w != nil {
		p.armExpiryLocked(w.deadline)
	}
}

// takeWaiterLocked returns a spare waiter, or a new one.
func (p *Pool[R]) takeWaiterLocked() *waiter[R] {
	if n := len(p.spare); n > 0 {
		w := p.spare[n-1]
		p.spare[n-1] = nil
		p.spare = p.spare[:n-1]
		return w
	}
	return &waiter[R]{ch: make(chan grant[R], 1)}
}

// keepWaiterLocked keeps w, whose wait is over (not queued, its channel
// drained), for a later wait.
func (p *Pool[R]) keepWaiterLocked(w *waiter[R]) {
	if len(p.spare) < maxSpareWaiters {
		p.spare = append(p.spare, w)
	}
}

func (p *Pool[R]) dialConn(ctx context.Context) (*Conn[R], error) {
	p.mu.Lock()
	p.dialing++
	p.stats.Dials++
	p.unlock()
	r, err := p.dial(ctx)
	now := time.Now()
	p.mu.Lock()
	defer p.unlock()
	p.dialing--
	if err != nil {
		p.stats.DialErrors++
		p.freeSlotLocked()
		return nil, err
	}
	c := &Conn[R]{Value: r, pool: p, created: now, lastUsed: now}
	if p.cfg.MaxLifetime > 0 {
		life := p.cfg.MaxLifetime
		if p.cfg.LifetimeJitter > 0 {
			life -= rand.N(min(p.cfg.LifetimeJitter, life/2) + 1)
		}
		c.expires = now.Add(life)
	}
	if p.closed {
		p.open--
		p.doomed = append(p.doomed, r)
		return nil, ErrClosed
	}
	return c, nil
}

// freeSlotLocked gives up one reserved slot: the oldest waiter, if any, may
// dial in its place.
func (p *Pool[R]) freeSlotLocked() {
	if !p.closed {
		if w := p.waiters.pop(); w != nil {
			w.ch <- grant[R]{dial: true}
			return
		}
	}
	p.open--
}

// Release returns a clean resource to the pool (or to the oldest waiter).
// A resource past its lifetime or from an old generation is closed instead,
// old generations at most one per RetireInterval. Release must be called at
// most once per Acquire and only at a protocol-safe point.
func (c *Conn[R]) Release() { c.ReleaseAt(time.Now()) }

// ReleaseAt is Release for a caller that has just read the clock: now is
// when the resource was last used (its idle time counts from then).
func (c *Conn[R]) ReleaseAt(now time.Time) {
	p := c.pool
	p.mu.Lock()
	defer p.unlock()
	c.lastUsed = now
	switch {
	case p.closed:
		p.discardLocked(c, &p.stats.ClosedDestroyed)
	case p.expiredLocked(c, now):
		p.discardLocked(c, &p.stats.ClosedLifetime)
	case p.staleLocked(c) && p.retireTokenLocked(now):
		p.discardLocked(c, &p.stats.ClosedRetired)
	default:
		p.putLocked(c)
	}
}

// Destroy closes a resource whose state is unknown and frees its slot.
func (c *Conn[R]) Destroy() {
	p := c.pool
	p.mu.Lock()
	defer p.unlock()
	p.discardLocked(c, &p.stats.ClosedDestroyed)
}

// putLocked hands c to the oldest waiter or makes it idle.
func (p *Pool[R]) putLocked(c *Conn[R]) {
	if w := p.waiters.pop(); w != nil {
		w.ch <- grant[R]{conn: c}
		return
	}
	p.idle = append(p.idle, c)
}

// discardLocked schedules c for closing once the lock is released and frees
// its slot.
func (p *Pool[R]) discardLocked(c *Conn[R], counter *uint64) {
	*counter++
	p.doomed = append(p.doomed, c.Value)
	p.freeSlotLocked()
}

// unlock releases mu, then closes the resources discarded while it was
// held, so a slow Close never blocks other callers.
func (p *Pool[R]) unlock() {
	doomed := p.doomed
	p.doomed = nil
	p.mu.Unlock()
	for _, r := range doomed {
		r.Close()
	}
}

func (p *Pool[R]) expiredLocked(c *Conn[R], now time.Time) bool {
	return !c.expires.IsZero() && now.After(c.expires)
}

func (p *Pool[R]) staleLocked(c *Conn[R]) bool {
	return p.cfg.Generation != nil && c.Value.Generation() < p.cfg.Generation()
}

func (p *Pool[R]) retireTokenLocked(now time.Time) bool {
	if now.Sub(p.retired) < p.cfg.RetireInterval {
		return false
	}
	p.retired = now
	return true
}

// Run enforces idle timeout, lifetime, staggered retirement and MinIdle
// until ctx ends. It returns nil when ctx ends.
func (p *Pool[R]) Run(ctx context.Context) error {
	tick := time.Second
	if p.cfg.RetireInterval > 0 && p.cfg.RetireInterval < tick {
		tick = p.cfg.RetireInterval
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		p.maintain(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Pool[R]) maintain(ctx context.Context) {
	now := time.Now()
	p.mu.Lock()
	keep := p.idle[:0]
	for i, c := range p.idle {
		switch {
		case p.expiredLocked(c, now):
			p.discardLocked(c, &p.stats.ClosedLifetime)
		case p.cfg.IdleTimeout > 0 && now.Sub(c.lastUsed) > p.cfg.IdleTimeout && len(p.idle)-i+len(keep) > p.cfg.MinIdle:
			p.discardLocked(c, &p.stats.ClosedIdle)
		case p.staleLocked(c) && p.retireTokenLocked(now):
			p.discardLocked(c, &p.stats.ClosedRetired)
		default:
			keep = append(keep, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	need := 0
	if !p.closed {
		need = min(p.cfg.MinIdle-len(p.idle)-p.dialing, p.cfg.Size-p.open)
	}
	need = max(need, 0)
	p.open += need
	p.unlock()
	for i := range need {
		c, err := p.dialConn(ctx)
		if err != nil {
			p.mu.Lock()
			for range need - i - 1 {
				p.freeSlotLocked()
			}
			p.unlock()
			return // the next tick retries
		}
		c.Release()
	}
}

// Purge closes every idle resource now, for a caller that learned their
// server went away; resources in use are left to their holders. Safe for
// concurrent use and idempotent.
func (p *Pool[R]) Purge() {
	p.mu.Lock()
	defer p.unlock()
	for _, c := range p.idle {
		p.discardLocked(c, &p.stats.ClosedBroken)
	}
	clear(p.idle)
	p.idle = p.idle[:0]
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool[R]) Stats() Stats {
	p.mu.Lock()
	defer p.unlock()
	s := p.stats
	s.Open = p.open
	s.Idle = len(p.idle)
	s.Dialing = p.dialing
	s.InUse = p.open - len(p.idle) - p.dialing
	s.Waiting = p.waiters.len()
	return s
}

// Close closes idle resources, fails waiters with ErrClosed and makes later
// Acquires fail. Resources in use are closed when released. Close is
// idempotent.
func (p *Pool[R]) Close() {
	p.mu.Lock()
	defer p.unlock()
	if p.closed {
		return
	}
	p.closed = true
	if p.expiryArmed {
		p.expiry.Stop()
		p.expiryArmed = false
	}
	for w := p.waiters.pop(); w != nil; w = p.waiters.pop() {
		w.ch <- grant[R]{err: ErrClosed}
	}
	for _, c := range p.idle {
		p.stats.ClosedDestroyed++
		p.open--
		p.doomed = append(p.doomed, c.Value)
	}
	p.idle = nil
}
