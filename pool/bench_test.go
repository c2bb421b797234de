package pool

import (
	"runtime"
	"testing"
	"time"
)

// BenchmarkContendedAcquire measures one Acquire that waits for a resource
// another goroutine releases to it: the path every request takes when more
// clients than connections are busy. Run with -benchmem; its allocations
// are the pool's own per wait.
func BenchmarkContendedAcquire(b *testing.B) {
	p := New(Config{Size: 1, AcquireTimeout: time.Minute}, newDialer().dial)
	defer p.Close()
	c, err := p.Acquire(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	hand := make(chan *fakeConn)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range hand {
			for p.Stats().Waiting == 0 {
				runtime.Gosched()
			}
			c.Release()
		}
	}()
	b.ReportAllocs()
	for b.Loop() {
		hand <- c
		if c, err = p.Acquire(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	close(hand)
	<-done
	c.Release()
	if s := p.Stats(); s.Waits < uint64(b.N) {
		b.Fatalf("%d of %d Acquires waited", s.Waits, b.N)
	}
}
