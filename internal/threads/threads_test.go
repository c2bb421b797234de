package threads

import (
	"context"
	"math"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func win(us float64) Window {
	return Window{Samples: 500, Mean: time.Duration(us * float64(time.Microsecond)), Queued: true}
}

// The bench's measured windows: one thread keeps up at 1 and 10 clients
// and not at 50; two threads at 50 clients stay; two threads at 10 clients
// go back to one.
func TestDefaultPolicyFollowsTheMeasuredWindows(t *testing.T) {
	p := DefaultPolicy(2)
	c := NewController(p)
	for _, us := range []float64{7, 11, 33, 74, 41, 67, 33, 74} {
		if n, changed := c.Observe(win(us)); changed || n != 1 {
			t.Fatalf("a %v µs window at one thread gave %d threads (changed %v), want 1", us, n, changed)
		}
	}
	if n, changed := c.Observe(win(264)); changed || n != 1 {
		t.Fatalf("one slow window raised the count to %d", n)
	}
	if n, changed := c.Observe(win(295)); !changed || n != 2 {
		t.Fatalf("two slow windows in a row gave %d threads (changed %v), want 2", n, changed)
	}
	for range 10 {
		for _, us := range []float64{113, 139, 280} {
			if n, changed := c.Observe(win(us)); changed || n != 2 {
				t.Fatalf("a %v µs window at two threads (the maximum) gave %d threads (changed %v)", us, n, changed)
			}
		}
	}
	for i, us := range []float64{41, 67, 53, 62} {
		if n, changed := c.Observe(win(us)); changed || n != 2 {
			t.Fatalf("fast window %d lowered the count early to %d", i+1, n)
		}
	}
	if n, changed := c.Observe(win(45)); !changed || n != 1 {
		t.Fatalf("five fast windows in a row gave %d threads (changed %v), want 1", n, changed)
	}
}

func TestControllerNeedsWindowsInARow(t *testing.T) {
	p := DefaultPolicy(4)
	c := NewController(p)
	// Slow windows broken by one between the thresholds never raise.
	for range 20 {
		c.Observe(win(300))
		if n, _ := c.Observe(win(100)); n != 1 {
			t.Fatalf("interrupted slow windows raised the count to %d", n)
		}
	}
	// Quiet windows never raise, whatever their mean; nor do windows
	// where no client queued for a connection.
	for range 20 {
		if n, _ := c.Observe(Window{Samples: p.MinSamples - 1, Mean: time.Second, Queued: true}); n != 1 {
			t.Fatalf("quiet windows raised the count to %d", n)
		}
		if n, _ := c.Observe(Window{Samples: 500, Mean: time.Second}); n != 1 {
			t.Fatalf("slow windows without queueing raised the count to %d", n)
		}
	}
	// Up one thread per run of slow windows, to the maximum.
	for want := 2; want <= 4; want++ {
		c.Observe(win(300))
		if n, changed := c.Observe(win(300)); !changed || n != want {
			t.Fatalf("got %d threads (changed %v), want %d", n, changed, want)
		}
	}
	c.Observe(win(300))
	if n, changed := c.Observe(win(300)); changed || n != 4 {
		t.Fatalf("raised past the maximum to %d", n)
	}
	// Without queueing the count comes back down, one thread per run,
	// however long goroutines wait; so it does in an idle process.
	for want := 3; want >= 1; want-- {
		var n int
		var changed bool
		for range p.LowerAfter {
			n, changed = c.Observe(Window{Samples: 500, Mean: time.Second})
		}
		if !changed || n != want {
			t.Fatalf("got %d threads (changed %v), want %d", n, changed, want)
		}
	}
	for range 3 * p.LowerAfter {
		if n, _ := c.Observe(Window{}); n != 1 {
			t.Fatalf("lowered below the minimum to %d", n)
		}
	}
}

func TestDefaultPolicyOfOneThreadNeverChanges(t *testing.T) {
	c := NewController(DefaultPolicy(0))
	for range 10 {
		if n, changed := c.Observe(win(1000)); changed || n != 1 {
			t.Fatalf("a one-thread policy moved to %d threads", n)
		}
	}
}

func TestWindowIsTheDifferenceOfTwoHistograms(t *testing.T) {
	inf := math.Inf(1)
	buckets := []float64{math.Inf(-1), 0, 1e-5, 1e-4, 1e-3, inf}
	var l Latencies
	w := l.window(&metrics.Float64Histogram{Counts: []uint64{0, 10, 0, 0, 0}, Buckets: buckets})
	if w.Samples != 10 || w.Mean != 0 {
		t.Fatalf("first window = %+v, want 10 samples at 0", w)
	}
	// Since then: 2 in [10µs, 100µs), 2 in [100µs, 1ms), 1 at or above 1ms.
	w = l.window(&metrics.Float64Histogram{Counts: []uint64{0, 10, 2, 2, 1}, Buckets: buckets})
	if want := (2*10*time.Microsecond + 2*100*time.Microsecond + time.Millisecond) / 5; w.Samples != 5 || w.Mean != want {
		t.Fatalf("second window = %+v, want 5 samples, mean %v", w, want)
	}
	if w = l.window(&metrics.Float64Histogram{Counts: []uint64{0, 10, 2, 2, 1}, Buckets: buckets}); w != (Window{}) {
		t.Fatalf("a window with nothing new = %+v, want the zero Window", w)
	}
}

func TestLatenciesReadsTheRuntime(t *testing.T) {
	l := NewLatencies()
	l.Next()
	// Goroutines handing a value back and forth are scheduled thousands of
	// times; the runtime samples a share of those events.
	ping, pong := make(chan int), make(chan int)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := range ping {
			pong <- v
		}
	}()
	var w Window
	for round := 0; round < 100 && w.Samples == 0; round++ {
		for i := range 10000 {
			ping <- i
			<-pong
		}
		w = l.Next()
	}
	close(ping)
	wg.Wait()
	if w.Samples == 0 {
		t.Fatal("no scheduling samples after a million goroutine hand-offs")
	}
}

func TestRunSetsEachChangeUntilItsContextEnds(t *testing.T) {
	p := DefaultPolicy(2)
	p.Interval = time.Millisecond
	windows := []Window{win(300), win(300), {}, {}, {}, {}, {}}
	var mu sync.Mutex
	calls := 0
	next := func() Window {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if i := calls - 2; i >= 0 && i < len(windows) { // the first call only starts the window
			return windows[i]
		}
		return Window{}
	}
	sets := make(chan int, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, p, next, func(n int) { sets <- n })
	}()
	for _, want := range []int{2, 1} {
		select {
		case n := <-sets:
			if n != want {
				t.Fatalf("set %d threads, want %d", n, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no change to %d threads within 10s", want)
		}
	}
	cancel()
	<-done
	if len(sets) != 0 {
		t.Fatalf("unexpected further change to %d threads", <-sets)
	}
}
