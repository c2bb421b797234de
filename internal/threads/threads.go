// Package threads adapts how many threads run the sidecar's goroutines
// (GOMAXPROCS) to how long its goroutines wait for one.
//
// One thread, like PgBouncer's, spends the least CPU per transaction while
// it keeps up. When it does not (many clients queueing for a small pool on
// a busy node), goroutines wait for the thread: a relay goroutine that
// holds a pooled connection waits too, so the connection's turnaround and
// the pool's throughput suffer, and the thread being preempted by the
// kernel stalls every session at once. The controller watches the
// runtime's scheduling latency (/sched/latencies:seconds: the time
// goroutines spend runnable before they run) and whether clients queued
// for pooled connections, adds a thread while both last, and removes one
// while the wait stays low or nobody queues. Without queueing a second
// thread costs CPU and buys no throughput: every client then has its
// connection, and its wait delays no other client's.
//
// The package holds no global state; Run is the one goroutine that
// changes the thread count, and the caller owns the process's GOMAXPROCS.
package threads

import (
	"context"
	"math"
	"runtime/metrics"
	"time"
)

// Policy bounds and paces the controller. The zero value is not usable;
// start from DefaultPolicy.
type Policy struct {
	Min, Max int           // thread bounds, 1 ≤ Min ≤ Max
	Interval time.Duration // length of one observation window
	// Raise is the mean wait above which, for RaiseAfter windows in a row
	// with clients queueing, a thread is added; Lower the mean wait below
	// which, for LowerAfter windows in a row, one is removed. A window
	// with fewer than MinSamples scheduling samples, or without queueing,
	// counts as quiet: it never raises and counts towards lowering.
	Raise, Lower           time.Duration
	RaiseAfter, LowerAfter int
	MinSamples             uint64
}

// DefaultPolicy is the policy the sidecar runs with, between one thread
// and most. The thresholds were measured on the bench (docs/performance.md,
// Threads under load): with one thread the mean wait was 7–11 µs at one
// pgbench client, 33–74 µs at 10 and 264–295 µs at 50 clients on a pool
// of 10, and with two threads at 50 clients 113–139 µs.
func DefaultPolicy(most int) Policy {
	return Policy{
		Min: 1, Max: max(most, 1), Interval: 100 * time.Millisecond,
		Raise: 150 * time.Microsecond, RaiseAfter: 2,
		Lower: 80 * time.Microsecond, LowerAfter: 5,
		MinSamples: 20,
	}
}

// Window is what one observation window saw: how many goroutine
// scheduling events the runtime sampled and their mean wait, and whether
// any client waited for a pooled connection.
type Window struct {
	Samples uint64
	Mean    time.Duration
	Queued  bool
}

// Controller decides the thread count from successive windows. It is a
// pure state machine, not safe for concurrent use.
type Controller struct {
	p        Policy
	n        int
	up, down int // consecutive windows above Raise / below Lower (or quiet)
}

// NewController starts at p.Min threads.
func NewController(p Policy) *Controller { return &Controller{p: p, n: p.Min} }

// Threads is the current decision.
func (c *Controller) Threads() int { return c.n }

// Observe takes one window and returns the thread count for the next one
// and whether it changed. A change restarts both counts, so the next
// change needs a full run of windows under the new count.
func (c *Controller) Observe(w Window) (int, bool) {
	switch {
	case w.Samples < c.p.MinSamples || !w.Queued:
		c.up, c.down = 0, c.down+1
	case w.Mean > c.p.Raise:
		c.up, c.down = c.up+1, 0
	case w.Mean < c.p.Lower:
		c.up, c.down = 0, c.down+1
	default:
		c.up, c.down = 0, 0
	}
	switch {
	case c.up >= c.p.RaiseAfter && c.n < c.p.Max:
		c.n++
	case c.down >= c.p.LowerAfter && c.n > c.p.Min:
		c.n--
	default:
		return c.n, false
	}
	c.up, c.down = 0, 0
	return c.n, true
}

// latencyName is the runtime metric the controller reads.
const latencyName = "/sched/latencies:seconds"

// Latencies turns the runtime's cumulative scheduling-latency histogram
// into windows. Not safe for concurrent use.
type Latencies struct {
	sample []metrics.Sample
	prev   []uint64
}

// NewLatencies returns a reader whose first Next covers the time since the
// process started.
func NewLatencies() *Latencies {
	return &Latencies{sample: []metrics.Sample{{Name: latencyName}}}
}

// Next reads the histogram and returns the window since the last call
// (Queued unset: the caller knows its pools).
func (l *Latencies) Next() Window {
	metrics.Read(l.sample)
	if l.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return Window{} // a runtime without the metric: always quiet
	}
	return l.window(l.sample[0].Value.Float64Histogram())
}

// window is the difference between h and the previous histogram. Each
// sample counts at its bucket's lower bound (0 for the first bucket), the
// measure the policy's thresholds were set with.
func (l *Latencies) window(h *metrics.Float64Histogram) Window {
	if len(l.prev) != len(h.Counts) {
		l.prev = make([]uint64, len(h.Counts))
	}
	var n uint64
	var sum float64
	for i, c := range h.Counts {
		d := c - l.prev[i]
		l.prev[i] = c
		if d == 0 {
			continue
		}
		n += d
		if lo := h.Buckets[i]; lo > 0 && !math.IsInf(lo, 1) {
			sum += float64(d) * lo
		}
	}
	if n == 0 {
		return Window{}
	}
	return Window{Samples: n, Mean: time.Duration(sum / float64(n) * float64(time.Second))}
}

// Run observes a window every p.Interval and calls set with each new
// thread count until ctx ends. next returns each window (in the sidecar,
// NewLatencies's Next with Queued from its pools). The caller sets p.Min
// threads before it starts.
func Run(ctx context.Context, p Policy, next func() Window, set func(int)) {
	c := NewController(p)
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	next() // the windows start now
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, changed := c.Observe(next()); changed {
				set(n)
			}
		}
	}
}
