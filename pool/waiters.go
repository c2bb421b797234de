package pool

import "time"

// maxSpareWaiters bounds the waiters a pool keeps for reuse: enough for
// every client of a busy pod waiting at once, without holding on to a
// burst's worth of them for good.
const maxSpareWaiters = 256

// waiter is one Acquire waiting for a resource. A pool reuses its waiters
// (Pool.takeWaiterLocked, Pool.keepWaiterLocked): a pool under contention
// allocates no channel, timer or list entry per wait. Its fields other
// than ch are guarded by the pool's mutex.
type waiter[R Resource] struct {
	// ch carries the one grant of a wait (buffered 1); it is empty
	// whenever the waiter is not queued.
	ch chan grant[R]
	// deadline is when the wait times out (AcquireTimeout); the pool's
	// expiry timer grants ErrTimeout then (Pool.expireWaiters). Never
	// earlier than the deadline of the waiter queued before it.
	deadline time.Time
	// prev and next link the waiter into the pool's queue while queued.
	prev, next *waiter[R]
	queued     bool
}

// waitQueue is a FIFO of waiters, oldest first, linked through the
// waiters themselves, so queueing allocates nothing and removing a waiter
// that gave up is O(1). Guarded by the pool's mutex.
type waitQueue[R Resource] struct {
	head, tail *waiter[R]
	n          int
}

// push queues w, which must not be queued, as the newest waiter.
func (q *waitQueue[R]) push(w *waiter[R]) {
	w.prev, w.next, w.queued = q.tail, nil, true
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n++
}

// oldest returns the oldest waiter without removing it, or nil.
func (q *waitQueue[R]) oldest() *waiter[R] { return q.head }

// newest returns the newest waiter, or nil.
func (q *waitQueue[R]) newest() *waiter[R] { return q.tail }

// pop removes and returns the oldest waiter, or nil when none waits.
func (q *waitQueue[R]) pop() *waiter[R] {
	w := q.head
	if w != nil {
		q.remove(w)
	}
	return w
}

// remove takes w out of the queue; it reports false, doing nothing, when
// w is not queued (it was already popped).
func (q *waitQueue[R]) remove(w *waiter[R]) bool {
	if !w.queued {
		return false
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	q.n--
	return true
}

// len returns the number of queued waiters.
func (q *waitQueue[R]) len() int { return q.n }
