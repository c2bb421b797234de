package main

import (
	"iter"
	"testing"
)

// What the Go runtime charges for handing a thread from one flow of
// control to another, the cost a goroutine per session pays twice per
// transaction (docs/performance.md, "What a goroutine per session costs
// per transaction"). Run with GOMAXPROCS=1, as the sidecar runs.

// BenchmarkHandOffBetweenGoroutines measures two hand-offs per operation:
// a send that wakes a parked goroutine and its answer that wakes the
// sender, which parked meanwhile.
func BenchmarkHandOffBetweenGoroutines(b *testing.B) {
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
	}()
	defer close(ping)
	for b.Loop() {
		ping <- 1
		<-pong
	}
}

// BenchmarkHandOffBetweenCoroutines measures two switches per operation:
// into a coroutine (iter.Pull's next) and back out of it (its yield).
func BenchmarkHandOffBetweenCoroutines(b *testing.B) {
	next, stop := iter.Pull(func(yield func(int) bool) {
		for i := 0; yield(i); i++ {
		}
	})
	defer stop()
	for b.Loop() {
		next()
	}
}
