package dbmetrics

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// AdvisoryElector is an Elector holding a Postgres session advisory lock
// (pg_try_advisory_lock(Key)) on a connection of its own, opened by Dial
// to the first shard's primary: the lock lives as long as that connection,
// so a sidecar that dies, or loses the connection, gives it up. It is
// safe for concurrent use.
type AdvisoryElector struct {
	// Dial opens the connection that holds the lock.
	Dial func(ctx context.Context) (Conn, error)
	// Key is the lock's key; 0 is AdvisoryLockKey.
	Key int64
}

var _ Elector = AdvisoryElector{}

// TryAcquire connects and tries the lock once. The connection is closed
// unless the lock was taken.
func (e AdvisoryElector) TryAcquire(ctx context.Context) (Lease, bool, error) {
	key := e.Key
	if key == 0 {
		key = AdvisoryLockKey
	}
	conn, err := e.Dial(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("db metrics election: %w", err)
	}
	got := ""
	err = bounded(ctx, conn, time.Until(deadlineOr(ctx, 10*time.Second)), func() error {
		return conn.Exec(fmt.Sprintf("SELECT pg_try_advisory_lock(%d)", key), func(cols [][]byte) {
			if len(cols) == 1 {
				got = string(cols[0])
			}
		})
	})
	if err != nil || got != "t" {
		_ = conn.Close()
		if err != nil {
			return nil, false, fmt.Errorf("db metrics election: %w", err)
		}
		return nil, false, nil
	}
	return &advisoryLease{conn: conn}, true, nil
}

// deadlineOr is ctx's deadline, or d from now when it has none.
func deadlineOr(ctx context.Context, d time.Duration) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(d)
}

// advisoryLease is a held advisory lock: its connection.
type advisoryLease struct {
	mu   sync.Mutex // serialises use of conn
	conn Conn
	done bool
}

// Check runs a query on the lock's connection: while the session
// answers, it holds the lock.
func (l *advisoryLease) Check(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return fmt.Errorf("the lock was released")
	}
	return bounded(ctx, l.conn, time.Until(deadlineOr(ctx, 10*time.Second)), func() error {
		return l.conn.Exec("SELECT 1", nil)
	})
}

// Release closes the connection, which releases the lock. Idempotent.
func (l *advisoryLease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.done = true
		_ = l.conn.Close()
	}
}
