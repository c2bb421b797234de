package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeResource is an upstream connection that records how often and when it
// was closed.
type fakeResource struct {
	id       int
	gen      uint64
	closes   atomic.Int32
	closedAt atomic.Int64 // UnixNano of the first Close
}

var _ Resource = (*fakeResource)(nil)

func (r *fakeResource) Close() error {
	if r.closes.Add(1) == 1 {
		r.closedAt.Store(time.Now().UnixNano())
	}
	return nil
}

func (r *fakeResource) Generation() uint64 { return r.gen }

func (r *fakeResource) closed() bool { return r.closes.Load() > 0 }

// fakeDialer makes fakeResources of its current generation and remembers
// every one it made. before, if set before the pool is used, runs at the
// start of every dial with the dial's 1-based number and may block or fail
// it.
type fakeDialer struct {
	gen    atomic.Uint64
	before func(ctx context.Context, n int) error

	mu    sync.Mutex
	dials int
	made  []*fakeResource
}

var errDial = errors.New("dial refused")

func newDialer() *fakeDialer {
	d := &fakeDialer{}
	d.gen.Store(1)
	return d
}

func (d *fakeDialer) dial(ctx context.Context) (*fakeResource, error) {
	d.mu.Lock()
	d.dials++
	n := d.dials
	d.mu.Unlock()
	if d.before != nil {
		if err := d.before(ctx, n); err != nil {
			return nil, err
		}
	}
	r := &fakeResource{id: n, gen: d.gen.Load()}
	d.mu.Lock()
	d.made = append(d.made, r)
	d.mu.Unlock()
	return r, nil
}

func (d *fakeDialer) dialCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials
}

func (d *fakeDialer) resources() []*fakeResource {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.made)
}

type fakeConn = Conn[*fakeResource]

// newPool returns a pool over d that is closed when the test ends.
func newPool(t *testing.T, cfg Config, d *fakeDialer) *Pool[*fakeResource] {
	t.Helper()
	p := New(cfg, d.dial)
	t.Cleanup(p.Close)
	return p
}

// startRun runs p.Run until the returned stop is called or the test ends,
// whichever comes first; stop waits for Run to return.
func startRun(t *testing.T, p *Pool[*fakeResource]) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func mustAcquire(t *testing.T, p *Pool[*fakeResource]) *fakeConn {
	t.Helper()
	c, err := p.Acquire(t.Context())
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return c
}

type acquired struct {
	conn *fakeConn
	err  error
}

// acquireAsync starts an Acquire in its own goroutine; its result arrives
// on the returned channel.
func acquireAsync(ctx context.Context, p *Pool[*fakeResource]) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		c, err := p.Acquire(ctx)
		ch <- acquired{c, err}
	}()
	return ch
}

func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for Acquire to return")
		var zero T
		return zero
	}
}

func TestAcquireDialsUpToSizeThenHandsTheFirstReleasedResourceToTheWaiter(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 3}, d)
	var held []*fakeConn
	for range 3 {
		held = append(held, mustAcquire(t, p))
	}
	if n := d.dialCount(); n != 3 {
		t.Fatalf("dials = %d, want 3", n)
	}
	if s := p.Stats(); s.Open != 3 || s.InUse != 3 || s.Idle != 0 {
		t.Fatalf("stats = %+v, want 3 open and in use", s)
	}

	got := acquireAsync(t.Context(), p)
	waitFor(t, "the fourth Acquire waits", func() bool { return p.Stats().Waiting == 1 })
	held[1].Release()
	a := receive(t, got)
	if a.err != nil {
		t.Fatalf("waiting Acquire: %v", a.err)
	}
	if a.conn.Value != held[1].Value {
		t.Errorf("waiter got resource %d, want the released one %d", a.conn.Value.id, held[1].Value.id)
	}
	if s := p.Stats(); d.dialCount() != 3 || s.Open != 3 || s.Waits != 1 || s.Waiting != 0 {
		t.Errorf("after hand-off: dials = %d, stats = %+v; want 3 dials, 3 open, 1 wait", d.dialCount(), s)
	}
	a.conn.Release()
	held[0].Release()
	held[2].Release()
}

func TestWaitersAreServedInTheOrderTheyArrived(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 1}, d)
	c := mustAcquire(t, p)

	const n = 5
	type served struct {
		who  int
		conn *fakeConn
	}
	servedCh := make(chan served, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := p.Acquire(t.Context())
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			servedCh <- served{i, c}
		})
		waitFor(t, fmt.Sprintf("waiter %d is queued", i), func() bool { return p.Stats().Waiting == i+1 })
	}

	for want := range n {
		c.Release()
		select {
		case s := <-servedCh:
			if s.who != want {
				t.Fatalf("release %d went to waiter %d, want %d", want, s.who, want)
			}
			if s.conn.Value != c.Value {
				t.Errorf("waiter %d got resource %d, want the released one %d", s.who, s.conn.Value.id, c.Value.id)
			}
			c = s.conn
		case <-time.After(5 * time.Second):
			t.Fatalf("no waiter was served after release %d", want)
		}
	}
	c.Release()
	wg.Wait()
	if n := d.dialCount(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestAWaiterGivesUpAfterAcquireTimeoutWithoutLosingASlot(t *testing.T) {
	const timeout = 50 * time.Millisecond
	d := newDialer()
	p := newPool(t, Config{Size: 1, AcquireTimeout: timeout}, d)
	c := mustAcquire(t, p)

	start := time.Now()
	got, err := p.Acquire(t.Context())
	if !errors.Is(err, ErrTimeout) || got != nil {
		t.Fatalf("Acquire = %v, %v; want nil, ErrTimeout", got, err)
	}
	if waited := time.Since(start); waited < timeout {
		t.Errorf("gave up after %v, want at least %v", waited, timeout)
	}
	if s := p.Stats(); s.Timeouts != 1 || s.Waiting != 0 || s.Open != 1 {
		t.Errorf("stats = %+v, want 1 timeout, 0 waiting, 1 open", s)
	}

	c.Release()
	c2 := mustAcquire(t, p)
	if c2.Value != c.Value {
		t.Errorf("Acquire after Release got resource %d, want the idle one %d", c2.Value.id, c.Value.id)
	}
	if s := p.Stats(); s.Waits != 1 || s.Open != 1 || d.dialCount() != 1 {
		t.Errorf("stats = %+v, dials = %d; want the second Acquire served without waiting or dialling", s, d.dialCount())
	}
	c2.Release()
}

// The pool times waits out with one timer set for the oldest waiter's
// deadline. When that waiter gets a resource first, the timer fires early
// for the next: it must neither end that wait before its own
// AcquireTimeout nor forget it.
func TestEachWaiterTimesOutAfterItsOwnAcquireTimeout(t *testing.T) {
	const timeout = 600 * time.Millisecond // half of it covers the queueing of two waiters on a busy machine
	d := newDialer()
	p := newPool(t, Config{Size: 1, AcquireTimeout: timeout}, d)
	c := mustAcquire(t, p)

	type ended struct {
		acquired
		after time.Duration
	}
	wait := func() <-chan ended {
		ch := make(chan ended, 1)
		start := time.Now()
		go func() {
			c, err := p.Acquire(t.Context())
			ch <- ended{acquired{c, err}, time.Since(start)}
		}()
		return ch
	}
	first := wait()
	waitFor(t, "the first waiter is queued", func() bool { return p.Stats().Waiting == 1 })
	time.Sleep(timeout / 2) // the second arrives half a timeout later
	second := wait()
	third := wait()
	waitFor(t, "three waiters are queued", func() bool { return p.Stats().Waiting == 3 })
	c.Release() // to the first, before its deadline

	a := receive(t, first)
	if a.err != nil || a.conn.Value != c.Value {
		t.Fatalf("first waiter: %v, %v; want the released resource", a.conn, a.err)
	}
	for i, ch := range []<-chan ended{second, third} {
		e := receive(t, ch)
		if !errors.Is(e.err, ErrTimeout) || e.conn != nil {
			t.Fatalf("waiter %d: %v, %v; want nil, ErrTimeout", i+2, e.conn, e.err)
		}
		if e.after < timeout {
			t.Errorf("waiter %d gave up after %v, before its AcquireTimeout of %v", i+2, e.after, timeout)
		}
	}
	if s := p.Stats(); s.Timeouts != 2 || s.Waiting != 0 || s.Open != 1 {
		t.Errorf("stats = %+v, want 2 timeouts, 0 waiting, 1 open", s)
	}
	a.conn.Release()
}

func TestCancellingTheContextEndsTheWaitWithoutLosingASlot(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 1}, d)
	c := mustAcquire(t, p)

	ctx, cancel := context.WithCancel(t.Context())
	got := acquireAsync(ctx, p)
	waitFor(t, "the second Acquire waits", func() bool { return p.Stats().Waiting == 1 })
	cancel()
	a := receive(t, got)
	if !errors.Is(a.err, context.Canceled) || a.conn != nil {
		t.Fatalf("Acquire = %v, %v; want nil, context.Canceled", a.conn, a.err)
	}
	if s := p.Stats(); s.Timeouts != 0 || s.Waiting != 0 || s.Open != 1 {
		t.Errorf("stats = %+v, want no timeouts, 0 waiting, 1 open", s)
	}

	c.Release()
	c2 := mustAcquire(t, p)
	if c2.Value != c.Value || d.dialCount() != 1 {
		t.Errorf("Acquire after Release got resource %d after %d dials, want the idle one %d and 1 dial", c2.Value.id, d.dialCount(), c.Value.id)
	}
	if s := p.Stats(); s.Open != 1 || s.Waits != 1 {
		t.Errorf("stats = %+v, want 1 open and 1 wait", s)
	}
	c2.Release()
}

// A waiter whose context ends just as a resource is handed to it either
// keeps the resource or passes it on; it is never lost. The race is hit by
// repetition, so each round checks the outcome rather than the path.
func TestAResourceHandedToAWaiterThatGivesUpGoesToTheNextWaiter(t *testing.T) {
	for round := range 100 {
		d := newDialer()
		p := New(Config{Size: 1}, d.dial)
		c := mustAcquire(t, p)
		ctx, cancel := context.WithCancel(t.Context())
		first := acquireAsync(ctx, p)
		waitFor(t, "the first waiter is queued", func() bool { return p.Stats().Waiting == 1 })
		second := acquireAsync(t.Context(), p)
		waitFor(t, "the second waiter is queued", func() bool { return p.Stats().Waiting == 2 })

		cancel()
		c.Release()
		if a := receive(t, first); a.err == nil {
			a.conn.Release() // it won the resource before noticing ctx
		} else if !errors.Is(a.err, context.Canceled) {
			t.Fatalf("round %d: first waiter: %v", round, a.err)
		}
		b := receive(t, second)
		if b.err != nil {
			t.Fatalf("round %d: second waiter: %v", round, b.err)
		}
		if b.conn.Value != c.Value || d.dialCount() != 1 {
			t.Fatalf("round %d: second waiter got resource %d after %d dials, want resource %d and 1 dial", round, b.conn.Value.id, d.dialCount(), c.Value.id)
		}
		b.conn.Release()
		p.Close()
		if s := p.Stats(); s.Open != 0 || c.Value.closes.Load() != 1 {
			t.Fatalf("round %d: after Close: stats = %+v, closes = %d; want 0 open, closed once", round, s, c.Value.closes.Load())
		}
	}
}

// Same race, but the pool closes before the waiter has dealt with the
// resource it was handed: the resource must be closed, not parked idle in a
// closed pool.
func TestAResourceHandedToAWaiterThatGivesUpIsClosedIfThePoolClosedMeanwhile(t *testing.T) {
	for round := range 200 {
		d := newDialer()
		p := New(Config{Size: 1}, d.dial)
		c := mustAcquire(t, p)
		ctx, cancel := context.WithCancel(t.Context())
		got := acquireAsync(ctx, p)
		waitFor(t, "the waiter is queued", func() bool { return p.Stats().Waiting == 1 })

		cancel()
		c.Release()
		p.Close()
		if a := receive(t, got); a.err == nil {
			a.conn.Release() // it won the resource; Release after Close closes it
		}
		if s := p.Stats(); s.Open != 0 || s.Idle != 0 || c.Value.closes.Load() != 1 {
			t.Fatalf("round %d: stats = %+v, closes = %d; want 0 open, 0 idle, closed once", round, s, c.Value.closes.Load())
		}
	}
}

func TestAFailedDialFreesItsSlotForAWaiterToDial(t *testing.T) {
	unblock := make(chan struct{})
	d := newDialer()
	d.before = func(ctx context.Context, n int) error {
		if n != 1 {
			return nil
		}
		select {
		case <-unblock:
			return errDial
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p := newPool(t, Config{Size: 1}, d)

	first := acquireAsync(t.Context(), p)
	waitFor(t, "the first Acquire dials", func() bool { return p.Stats().Dialing == 1 })
	second := acquireAsync(t.Context(), p)
	waitFor(t, "the second Acquire waits", func() bool { return p.Stats().Waiting == 1 })

	close(unblock)
	if a := receive(t, first); !errors.Is(a.err, errDial) {
		t.Fatalf("first Acquire = %v, want %v", a.err, errDial)
	}
	b := receive(t, second)
	if b.err != nil {
		t.Fatalf("second Acquire: %v", b.err)
	}
	if b.conn.Value.id != 2 {
		t.Errorf("second Acquire got resource %d, want the one from dial 2", b.conn.Value.id)
	}
	if s := p.Stats(); s.Dials != 2 || s.DialErrors != 1 || s.Open != 1 || s.Waiting != 0 {
		t.Errorf("stats = %+v, want 2 dials, 1 dial error, 1 open", s)
	}
	b.conn.Release()
}

func TestDestroyClosesTheResourceOnceAndFreesItsSlot(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 1}, d)
	c := mustAcquire(t, p)
	got := acquireAsync(t.Context(), p)
	waitFor(t, "the second Acquire waits", func() bool { return p.Stats().Waiting == 1 })

	c.Destroy()
	if n := c.Value.closes.Load(); n != 1 {
		t.Errorf("destroyed resource closed %d times, want 1", n)
	}
	a := receive(t, got)
	if a.err != nil {
		t.Fatalf("waiting Acquire: %v", a.err)
	}
	if a.conn.Value == c.Value || d.dialCount() != 2 {
		t.Errorf("waiter got resource %d after %d dials, want a fresh one from dial 2", a.conn.Value.id, d.dialCount())
	}
	if s := p.Stats(); s.ClosedDestroyed != 1 || s.Open != 1 {
		t.Errorf("stats = %+v, want 1 destroyed, 1 open", s)
	}
	a.conn.Release()
	p.Close()
	if n := c.Value.closes.Load(); n != 1 {
		t.Errorf("destroyed resource closed %d times after Close, want 1", n)
	}
}

func TestReleasingAResourcePastItsLifetimeClosesIt(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 1, MaxLifetime: time.Millisecond}, d)
	c := mustAcquire(t, p)
	waitFor(t, "the resource outlives MaxLifetime", func() bool { return time.Since(c.Created()) > 2*time.Millisecond })

	c.Release()
	if n := c.Value.closes.Load(); n != 1 {
		t.Errorf("expired resource closed %d times, want 1", n)
	}
	if s := p.Stats(); s.ClosedLifetime != 1 || s.Open != 0 || s.Idle != 0 {
		t.Errorf("stats = %+v, want 1 closed for lifetime, none open", s)
	}
}

func TestAcquireSkipsAnIdleResourcePastItsLifetime(t *testing.T) {
	const lifetime = 20 * time.Millisecond
	d := newDialer()
	p := newPool(t, Config{Size: 1, MaxLifetime: lifetime}, d)
	old := mustAcquire(t, p)
	old.Release()
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("stats = %+v, want the young resource kept idle", s)
	}
	waitFor(t, "the idle resource outlives MaxLifetime", func() bool { return time.Since(old.Created()) > lifetime+time.Millisecond })

	c := mustAcquire(t, p)
	if c.Value == old.Value || !old.Value.closed() {
		t.Errorf("Acquire returned resource %d (old closed: %v), want a fresh one and the old one closed", c.Value.id, old.Value.closed())
	}
	if s := p.Stats(); s.ClosedLifetime != 1 || s.Open != 1 || d.dialCount() != 2 {
		t.Errorf("stats = %+v, dials = %d; want 1 closed for lifetime, 1 open, 2 dials", s, d.dialCount())
	}
	c.Destroy()
}

func TestLifetimeJitterNeverMakesALifetimeNegativeOrLongerThanMaxLifetime(t *testing.T) {
	const maxLifetime = 100 * time.Millisecond
	check := func(jitter, floor time.Duration) {
		t.Helper()
		const n = 100
		d := newDialer()
		p := newPool(t, Config{Size: n, MaxLifetime: maxLifetime, LifetimeJitter: jitter}, d)
		lifetimes := map[time.Duration]bool{}
		for range n {
			c := mustAcquire(t, p)
			life := c.expires.Sub(c.created)
			if life <= 0 || life < floor || life > maxLifetime {
				t.Errorf("jitter %v: lifetime %v, want within [%v, %v] and positive", jitter, life, floor, maxLifetime)
			}
			lifetimes[life] = true
		}
		if len(lifetimes) < 2 {
			t.Errorf("jitter %v: all %d lifetimes equal, want them spread", jitter, n)
		}
	}
	check(20*time.Millisecond, maxLifetime-20*time.Millisecond)
	check(time.Hour, time.Nanosecond) // jitter larger than the lifetime itself
}

func TestRunRetiresOldGenerationResourcesOneAtATime(t *testing.T) {
	const interval = 50 * time.Millisecond
	var current atomic.Uint64
	current.Store(1)
	d := newDialer()
	p := newPool(t, Config{Size: 4, RetireInterval: interval, Generation: current.Load}, d)
	var held []*fakeConn
	for range 4 {
		held = append(held, mustAcquire(t, p))
	}
	for _, c := range held {
		c.Release()
	}
	if s := p.Stats(); s.Idle != 4 || s.ClosedRetired != 0 {
		t.Fatalf("stats = %+v, want 4 idle current resources", s)
	}

	current.Store(2)
	startRun(t, p)
	old := d.resources()
	waitFor(t, "all old resources are retired", func() bool {
		return !slices.ContainsFunc(old, func(r *fakeResource) bool { return !r.closed() })
	})

	var at []time.Time
	for _, r := range old {
		if n := r.closes.Load(); n != 1 {
			t.Errorf("resource %d closed %d times, want 1", r.id, n)
		}
		at = append(at, time.Unix(0, r.closedAt.Load()))
	}
	slices.SortFunc(at, time.Time.Compare)
	// Closes happen just after the decision, outside the lock, so allow a
	// little scheduling noise; closing two at once would show up as ~0.
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < interval*3/4 {
			t.Errorf("retirements %d and %d were %v apart, want about %v or more", i-1, i, gap, interval)
		}
	}
	if s := p.Stats(); s.ClosedRetired != 4 || s.Open != 0 || d.dialCount() != 4 {
		t.Errorf("stats = %+v, dials = %d; want 4 retired, none open, no new dials", s, d.dialCount())
	}
}

func TestReleaseRetiresAStaleResourceOnlyWhenTheRetireTokenIsFree(t *testing.T) {
	var current atomic.Uint64
	current.Store(1)
	d := newDialer()
	p := newPool(t, Config{Size: 2, RetireInterval: time.Hour, Generation: current.Load}, d)
	a := mustAcquire(t, p)
	b := mustAcquire(t, p)

	current.Store(2)
	a.Release()
	if !a.Value.closed() {
		t.Error("first stale resource released with the token free was kept, want it closed")
	}
	b.Release()
	if b.Value.closed() {
		t.Error("second stale resource released within RetireInterval was closed, want it kept")
	}
	if s := p.Stats(); s.ClosedRetired != 1 || s.Idle != 1 || s.Open != 1 {
		t.Errorf("stats = %+v, want 1 retired, 1 idle, 1 open", s)
	}
}

func TestRunKeepsMinIdleResourcesOpenWithinSize(t *testing.T) {
	d := newDialer()
	var p *Pool[*fakeResource]
	d.before = func(context.Context, int) error {
		if s := p.Stats(); s.Open > s.Size {
			t.Errorf("dialling with %d open, want at most Size %d", s.Open, s.Size)
		}
		return nil
	}
	// RetireInterval below a second also shortens Run's maintenance tick.
	p = newPool(t, Config{Size: 4, MinIdle: 2, RetireInterval: 5 * time.Millisecond}, d)
	startRun(t, p)
	waitFor(t, "Run opens MinIdle resources", func() bool { return p.Stats().Idle == 2 })
	if n := d.dialCount(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}

	held := []*fakeConn{mustAcquire(t, p), mustAcquire(t, p)}
	waitFor(t, "Run replaces the idle resources taken", func() bool { return p.Stats().Idle == 2 })
	held = append(held, mustAcquire(t, p), mustAcquire(t, p))
	if s := p.Stats(); s.Open != 4 || s.InUse != 4 || d.dialCount() != 4 {
		t.Errorf("stats = %+v, dials = %d; want 4 open and in use, 4 dials", s, d.dialCount())
	}
	for _, c := range held {
		c.Release()
	}
	if s := p.Stats(); s.Open != 4 || s.Idle != 4 {
		t.Errorf("stats = %+v, want 4 open and idle", s)
	}
}

func TestRunClosesIdleResourcesAboveMinIdleButNeverBelow(t *testing.T) {
	const idleTimeout = 20 * time.Millisecond
	// Run consults Generation for every idle resource it keeps, so counting
	// the calls tells how often it has looked at them.
	var looks atomic.Int64
	generation := func() uint64 { looks.Add(1); return 1 }
	d := newDialer()
	p := newPool(t, Config{
		Size: 4, MinIdle: 2, IdleTimeout: idleTimeout,
		RetireInterval: 5 * time.Millisecond, // also Run's tick
		Generation:     generation,
	}, d)
	startRun(t, p)
	waitFor(t, "Run opens MinIdle resources", func() bool { return p.Stats().Idle == 2 })
	var held []*fakeConn
	for range 4 {
		held = append(held, mustAcquire(t, p))
	}
	for _, c := range held {
		c.Release()
	}
	released := time.Now()

	waitFor(t, "idle resources above MinIdle are closed", func() bool { return p.Stats().ClosedIdle >= 2 })
	waitFor(t, "the rest have been idle well past IdleTimeout", func() bool { return time.Since(released) > 3*idleTimeout })
	seen := looks.Load()
	waitFor(t, "Run looks at the idle resources several more times", func() bool { return looks.Load() >= seen+10 })

	if s := p.Stats(); s.ClosedIdle != 2 || s.Idle != 2 || s.Open != 2 || d.dialCount() != 4 {
		t.Errorf("stats = %+v, dials = %d; want 2 closed idle, 2 kept idle, no new dials", s, d.dialCount())
	}
	closed := 0
	for _, r := range d.resources() {
		closed += int(r.closes.Load())
	}
	if closed != 2 {
		t.Errorf("%d closes, want 2", closed)
	}
}

func TestCloseFailsWaitersWithErrClosed(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 1}, d)
	c := mustAcquire(t, p)
	first := acquireAsync(t.Context(), p)
	waitFor(t, "the first waiter is queued", func() bool { return p.Stats().Waiting == 1 })
	second := acquireAsync(t.Context(), p)
	waitFor(t, "the second waiter is queued", func() bool { return p.Stats().Waiting == 2 })

	p.Close()
	for i, ch := range []<-chan acquired{first, second} {
		if a := receive(t, ch); !errors.Is(a.err, ErrClosed) || a.conn != nil {
			t.Errorf("waiter %d: Acquire = %v, %v; want nil, ErrClosed", i, a.conn, a.err)
		}
	}
	if s := p.Stats(); s.Waiting != 0 || s.Timeouts != 0 {
		t.Errorf("stats = %+v, want no waiters and no timeouts", s)
	}
	c.Release()
	if n := c.Value.closes.Load(); n != 1 {
		t.Errorf("resource released after Close closed %d times, want 1", n)
	}
	if s := p.Stats(); s.Open != 0 {
		t.Errorf("stats = %+v, want none open", s)
	}
}

func TestCloseClosesIdleResourcesAndTheOthersOnRelease(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 2}, d)
	inUse := mustAcquire(t, p)
	idle := mustAcquire(t, p)
	idle.Release()

	p.Close()
	if n := idle.Value.closes.Load(); n != 1 {
		t.Errorf("idle resource closed %d times, want 1", n)
	}
	if inUse.Value.closed() {
		t.Error("resource in use was closed by Close, want it closed on Release")
	}
	if c, err := p.Acquire(t.Context()); !errors.Is(err, ErrClosed) || c != nil {
		t.Errorf("Acquire after Close = %v, %v; want nil, ErrClosed", c, err)
	}

	inUse.Release()
	if n := inUse.Value.closes.Load(); n != 1 {
		t.Errorf("resource released after Close closed %d times, want 1", n)
	}
	p.Close() // idempotent
	for _, r := range d.resources() {
		if n := r.closes.Load(); n != 1 {
			t.Errorf("resource %d closed %d times after a second Close, want 1", r.id, n)
		}
	}
	if s := p.Stats(); s.Open != 0 || s.Idle != 0 || s.InUse != 0 {
		t.Errorf("stats = %+v, want nothing open", s)
	}
}

func TestADialFinishingAfterCloseClosesItsResource(t *testing.T) {
	unblock := make(chan struct{})
	d := newDialer()
	d.before = func(ctx context.Context, _ int) error {
		select {
		case <-unblock:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p := newPool(t, Config{Size: 1}, d)
	got := acquireAsync(t.Context(), p)
	waitFor(t, "Acquire dials", func() bool { return p.Stats().Dialing == 1 })

	p.Close()
	close(unblock)
	if a := receive(t, got); !errors.Is(a.err, ErrClosed) {
		t.Fatalf("Acquire = %v, want ErrClosed", a.err)
	}
	rs := d.resources()
	if len(rs) != 1 || rs[0].closes.Load() != 1 {
		t.Fatalf("made %d resources, want 1 closed once", len(rs))
	}
	if s := p.Stats(); s.Open != 0 || s.Dialing != 0 {
		t.Errorf("stats = %+v, want nothing open or dialling", s)
	}
}

func TestConcurrentUseNeverExceedsSizeNorClosesAResourceTwice(t *testing.T) {
	const (
		size    = 4
		workers = 50
		rounds  = 200
	)
	d := newDialer()
	var p *Pool[*fakeResource]
	var tooMany atomic.Int32
	d.before = func(context.Context, int) error {
		if p.Stats().Open > size {
			tooMany.Add(1)
		}
		return nil
	}
	p = newPool(t, Config{
		Size:           size,
		MinIdle:        1,
		IdleTimeout:    time.Millisecond,
		MaxLifetime:    20 * time.Millisecond,
		LifetimeJitter: 5 * time.Millisecond,
		AcquireTimeout: 30 * time.Second,
		RetireInterval: 2 * time.Millisecond,
		Generation:     d.gen.Load,
	}, d)
	stopRun := startRun(t, p)

	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			default:
			}
			if s := p.Stats(); s.Open > size || s.Idle+s.Dialing > s.Open {
				tooMany.Add(1)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()

	var inUse, maxInUse atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				c, err := p.Acquire(t.Context())
				if err != nil {
					t.Errorf("worker %d round %d: %v", w, i, err)
					return
				}
				n := inUse.Add(1)
				for m := maxInUse.Load(); n > m && !maxInUse.CompareAndSwap(m, n); m = maxInUse.Load() {
				}
				if c.Value.closed() {
					t.Errorf("worker %d round %d: got closed resource %d", w, i, c.Value.id)
				}
				if w == 0 && i == rounds/2 {
					d.gen.Add(1) // rotate credentials mid-run
				}
				inUse.Add(-1)
				if (w+i)%10 == 0 {
					c.Destroy()
				} else {
					c.Release()
				}
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	stopRun()
	p.Close()

	if n := tooMany.Load(); n != 0 {
		t.Errorf("saw more than Size open (or inconsistent stats) %d times", n)
	}
	if m := maxInUse.Load(); m > size {
		t.Errorf("%d resources in use at once, want at most %d", m, size)
	}
	for _, r := range d.resources() {
		if n := r.closes.Load(); n != 1 {
			t.Errorf("resource %d closed %d times, want exactly 1 after Close", r.id, n)
		}
	}
	s := p.Stats()
	if s.Open != 0 || s.Acquires != workers*rounds || s.Timeouts != 0 {
		t.Errorf("stats = %+v, want nothing open, %d acquires, no timeouts", s, workers*rounds)
	}
	t.Logf("dials %d, waits %d, retired %d, lifetime %d, idle %d, destroyed %d",
		s.Dials, s.Waits, s.ClosedRetired, s.ClosedLifetime, s.ClosedIdle, s.ClosedDestroyed)
}

// checkedResource reports itself alive or not, counting the checks.
type checkedResource struct {
	fakeResource
	dead   atomic.Bool
	checks atomic.Int32
}

func (r *checkedResource) Alive() bool {
	r.checks.Add(1)
	return !r.dead.Load()
}

// newCheckedPool returns a pool of two checkedResources with checkDelay,
// which appends each resource it makes to *made.
func newCheckedPool(made *[]*checkedResource, checkDelay time.Duration) *Pool[*checkedResource] {
	return New(Config{Size: 2, AcquireTimeout: time.Second, CheckDelay: checkDelay}, func(context.Context) (*checkedResource, error) {
		r := &checkedResource{fakeResource: fakeResource{id: len(*made) + 1}}
		*made = append(*made, r)
		return r, nil
	})
}

func TestAcquireChecksOnlyResourcesIdleLongerThanCheckDelay(t *testing.T) {
	for _, delay := range []time.Duration{0, time.Hour} {
		var made []*checkedResource
		p := newCheckedPool(&made, delay)
		c, err := p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		c.Release()
		made[0].dead.Store(true) // the server went away while it sat idle
		c, err = p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case delay == 0 && (made[0].checks.Load() != 1 || c.Value == made[0] || !made[0].closed()):
			t.Errorf("CheckDelay 0: checks %d, reused the dead resource %v; want it checked, closed and replaced", made[0].checks.Load(), c.Value == made[0])
		case delay > 0 && (made[0].checks.Load() != 0 || c.Value != made[0]):
			t.Errorf("CheckDelay %s: checks %d, reused %v; want the resource used a moment ago reused unchecked", delay, made[0].checks.Load(), c.Value == made[0])
		}
		c.Release()
		p.Close()
	}
	// AcquireChecked checks however recently the resource was used.
	var made []*checkedResource
	p := newCheckedPool(&made, time.Hour)
	defer p.Close()
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	made[0].dead.Store(true)
	c, err = p.AcquireChecked(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if made[0].checks.Load() != 1 || c.Value == made[0] || !made[0].closed() {
		t.Errorf("AcquireChecked: checks %d, reused the dead resource %v; want it checked, closed and replaced", made[0].checks.Load(), c.Value == made[0])
	}
	c.Release()
}

func TestPurgeClosesIdleResourcesAndLeavesThoseInUse(t *testing.T) {
	d := newDialer()
	p := newPool(t, Config{Size: 3}, d)
	a, b, c := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
	a.Release()
	b.Release()
	p.Purge()
	if !a.Value.closed() || !b.Value.closed() || c.Value.closed() {
		t.Fatalf("after Purge: idle closed %v %v, in use closed %v", a.Value.closed(), b.Value.closed(), c.Value.closed())
	}
	if s := p.Stats(); s.Open != 1 || s.Idle != 0 || s.ClosedBroken != 2 {
		t.Errorf("stats = %+v, want 1 open, 0 idle, 2 closed as broken", s)
	}
	c.Release()
	n := mustAcquire(t, p)
	if n.Value != c.Value {
		t.Error("the resource in use during Purge was not kept")
	}
	n.Release()
	p.Purge()
	p.Purge()
	if got := c.Value.closes.Load(); got != 1 {
		t.Errorf("purged twice: closed %d times", got)
	}
}

func TestAcquireTimedReportsOnlyWaitsAndDials(t *testing.T) {
	d := newDialer()
	const dialTime = 20 * time.Millisecond
	d.before = func(ctx context.Context, n int) error { time.Sleep(dialTime); return nil }
	p := newPool(t, Config{Size: 1}, d)
	c, took, err := p.AcquireTimed(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	if took < dialTime {
		t.Errorf("a dial took %v, want at least the dialer's %v", took, dialTime)
	}
	type result struct {
		took time.Duration
		err  error
	}
	got := make(chan result, 1)
	go func() {
		w, took, err := p.AcquireTimed(t.Context(), true)
		if err == nil {
			w.Release()
		}
		got <- result{took, err}
	}()
	waitFor(t, "the second AcquireTimed waits", func() bool { return p.Stats().Waiting == 1 })
	const held = 30 * time.Millisecond
	time.Sleep(held) // the wait being measured, not a hope
	c.Release()
	r := <-got
	if r.err != nil || r.took < held {
		t.Errorf("a wait: took %v, %v; want at least %v", r.took, r.err, held)
	}
	c, took, err = p.AcquireTimed(t.Context(), false)
	if err != nil || took != 0 {
		t.Errorf("an idle resource at hand: took %v, %v; want 0", took, err)
	}
	c.Release()
}

func TestReleaseAtCountsTheIdleTimeFromTheCallersClock(t *testing.T) {
	var made []*checkedResource
	p := newCheckedPool(&made, time.Hour)
	defer p.Close()
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.ReleaseAt(time.Now().Add(-2 * time.Hour)) // last used two hours ago
	c, err = p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if made[0].checks.Load() != 1 || c.Value != made[0] {
		t.Errorf("checks %d, reused %v; want the resource idle past CheckDelay checked, and reused as alive", made[0].checks.Load(), c.Value == made[0])
	}
	c.ReleaseAt(time.Now())
	if c, err = p.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	if made[0].checks.Load() != 1 || c.Value != made[0] {
		t.Errorf("checks %d after a release just now; want no second check", made[0].checks.Load())
	}
	c.Release()
}
