package pool

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// order lists the queue's waiters oldest first, by their index in ws,
// walking the links both ways so a broken back link shows too.
func order(t *testing.T, q *waitQueue[*fakeResource], ws []*waiter[*fakeResource]) []int {
	t.Helper()
	var fwd, back []int
	for w := q.head; w != nil; w = w.next {
		fwd = append(fwd, slices.Index(ws, w))
	}
	for w := q.tail; w != nil; w = w.prev {
		back = append(back, slices.Index(ws, w))
	}
	slices.Reverse(back)
	if !slices.Equal(fwd, back) {
		t.Fatalf("queue forwards %v, backwards %v", fwd, back)
	}
	if len(fwd) != q.len() {
		t.Fatalf("queue holds %v but counts %d", fwd, q.len())
	}
	return fwd
}

func TestTheWaitQueueKeepsArrivalOrderAndRemovesFromAnywhere(t *testing.T) {
	var q waitQueue[*fakeResource]
	ws := make([]*waiter[*fakeResource], 5)
	for i := range ws {
		ws[i] = &waiter[*fakeResource]{}
		q.push(ws[i])
	}
	if got := order(t, &q, ws); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("after pushes: %v", got)
	}
	for _, i := range []int{2, 0, 4} { // middle, head, tail
		if !q.remove(ws[i]) {
			t.Fatalf("remove(%d) reported it was not queued", i)
		}
	}
	if got := order(t, &q, ws); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("after removing 2, 0, 4: %v", got)
	}
	if q.remove(ws[2]) {
		t.Error("removing a waiter twice reported it queued the second time")
	}
	if w := q.pop(); w != ws[1] || w.queued {
		t.Fatalf("pop = waiter %d (queued %v), want 1, no longer queued", slices.Index(ws, w), w.queued)
	}
	q.push(ws[0]) // a removed waiter can queue again, as the newest
	if got := order(t, &q, ws); !slices.Equal(got, []int{3, 0}) {
		t.Fatalf("after pop and push: %v", got)
	}
	q.pop()
	q.pop()
	if q.pop() != nil || q.head != nil || q.tail != nil || q.len() != 0 {
		t.Fatalf("emptied queue: head %p tail %p len %d, pop not nil", q.head, q.tail, q.len())
	}
}

// A finished wait leaves its waiter for the next one, whether it timed out
// or was granted, and a reused waiter's timer starts afresh: a wait after a
// timed-out one gets a resource handed over before its own timeout, and a
// later wait still lasts its whole timeout.
func TestWaitersAreReusedWithTheirTimerStartedAfresh(t *testing.T) {
	const timeout = 50 * time.Millisecond
	p := newPool(t, Config{Size: 1, AcquireTimeout: timeout}, newDialer())
	c := mustAcquire(t, p)

	if _, err := p.Acquire(t.Context()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("first wait: %v, want ErrTimeout", err)
	}
	p.mu.Lock()
	if len(p.spare) != 1 {
		t.Fatalf("after a timed-out wait the pool keeps %d spare waiters, want 1", len(p.spare))
	}
	w := p.spare[0]
	p.mu.Unlock()

	got := acquireAsync(t.Context(), p)
	waitFor(t, "the second Acquire waits", func() bool { return p.Stats().Waiting == 1 })
	p.mu.Lock()
	reused := p.waiters.head == w && len(p.spare) == 0
	p.mu.Unlock()
	if !reused {
		t.Fatal("the second wait did not take the spare waiter")
	}
	c.Release()
	a := receive(t, got)
	if a.err != nil || a.conn.Value != c.Value {
		t.Fatalf("second wait: %v, %v; want the released resource", a.conn, a.err)
	}

	start := time.Now()
	if _, err := p.Acquire(t.Context()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("third wait: %v, want ErrTimeout", err)
	}
	if waited := time.Since(start); waited < timeout {
		t.Errorf("third wait gave up after %v, want at least %v (a stale expiry of the reused timer?)", waited, timeout)
	}
	p.mu.Lock()
	if len(p.spare) != 1 || p.spare[0] != w || w.queued || len(w.ch) != 0 {
		t.Errorf("after three waits: %d spare waiters, the same one %v, queued %v, %d grants left in it; want the one waiter, idle and empty",
			len(p.spare), len(p.spare) > 0 && p.spare[0] == w, w.queued, len(w.ch))
	}
	p.mu.Unlock()
	a.conn.Release()
	if s := p.Stats(); s.Waits != 3 || s.Timeouts != 2 || s.Waiting != 0 {
		t.Errorf("stats = %+v, want 3 waits, 2 timeouts, none waiting", s)
	}
}

func TestThePoolKeepsAtMostMaxSpareWaiters(t *testing.T) {
	p := newPool(t, Config{Size: 1}, newDialer())
	p.mu.Lock()
	defer p.mu.Unlock()
	for range maxSpareWaiters + 10 {
		p.keepWaiterLocked(&waiter[*fakeResource]{ch: make(chan grant[*fakeResource], 1)})
	}
	if len(p.spare) != maxSpareWaiters {
		t.Errorf("kept %d spare waiters, want at most %d", len(p.spare), maxSpareWaiters)
	}
}
