package backup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Locker elects the one sidecar that runs a backup when every pod runs
// one. Implementations must be safe for concurrent use.
type Locker interface {
	// TryLock takes the lock without waiting. ok is false, with a nil
	// error, when another holder has it. When ok, unlock releases it; it is
	// idempotent and safe to call from any goroutine.
	TryLock(ctx context.Context) (unlock func(), ok bool, err error)
}

// AdvisoryLockKey is the key of the session advisory lock that
// PGAdvisoryLocker takes in the Brownie database on the first shard's
// primary: the ASCII bytes of "brownbkp" read as a big-endian int64.
const AdvisoryLockKey int64 = 0x62726f776e626b70 // "brownbkp"

// PGAdvisoryLocker is a Locker holding a Postgres session advisory lock
// (pg_try_advisory_lock) on the first shard's primary, over its own pgx
// connection authenticated with the sidecar's current client certificate.
// The lock lives as long as that connection: unlock releases it and closes
// the connection, and a server restart or a network failure releases it
// too, in which case the existence check under the lock keeps a slot from
// being backed up twice. It is safe for concurrent use; each successful
// TryLock opens one connection.
type PGAdvisoryLocker struct {
	target pgTarget
	shards func() []Shard
	key    int64
	log    *zap.Logger
}

var _ Locker = (*PGAdvisoryLocker)(nil)

// LockerDeps configures NewPGAdvisoryLocker; the fields mean what they mean
// in Deps.
type LockerDeps struct {
	Log      *zap.Logger
	Shards   func() []Shard
	Database string
	User     string
	SSLMode  string
	Certs    CertsFunc
	// TempDir is where the certificate files are briefly written while the
	// connection settings are parsed; empty is the system default.
	TempDir string
	// Key overrides AdvisoryLockKey (tests use it to run independent
	// elections on one server).
	Key int64
}

// NewPGAdvisoryLocker returns a PGAdvisoryLocker. It does no I/O.
func NewPGAdvisoryLocker(deps LockerDeps) *PGAdvisoryLocker {
	key := deps.Key
	if key == 0 {
		key = AdvisoryLockKey
	}
	log := deps.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &PGAdvisoryLocker{
		target: pgTarget{database: deps.Database, user: deps.User, sslMode: deps.SSLMode, certs: deps.Certs, tempDir: deps.TempDir},
		shards: deps.Shards,
		key:    key,
		log:    log,
	}
}

// TryLock connects to the first shard's primary and tries the advisory
// lock once.
func (l *PGAdvisoryLocker) TryLock(ctx context.Context) (func(), bool, error) {
	lease, ok, err := l.TryAcquire(ctx)
	if !ok {
		return nil, false, err
	}
	return lease.Release, true, nil
}

// TryAcquire is TryLock returning the held lock as a Lease, for holders
// that keep it for a long time and must notice when it is lost. ok is
// false, with a nil error, when another session holds the lock.
func (l *PGAdvisoryLocker) TryAcquire(ctx context.Context) (*Lease, bool, error) {
	var shards []Shard
	if l.shards != nil {
		shards = l.shards()
	}
	if len(shards) == 0 {
		return nil, false, ErrNoShards
	}
	first := shards[0]
	conn, err := l.target.connect(ctx, first, l.target.database)
	if err != nil {
		return nil, false, fmt.Errorf("advisory lock on shard %s: %w", first.Name, err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", l.key).Scan(&ok); err != nil {
		closeConn(conn)
		return nil, false, fmt.Errorf("advisory lock on shard %s: %w", first.Name, err)
	}
	if !ok {
		closeConn(conn)
		return nil, false, nil
	}
	return &Lease{conn: conn, key: l.key, shard: first.Name, log: l.log}, true, nil
}

// Lease is a held session advisory lock: it lives as long as its
// connection. Check and Release may be called from different goroutines;
// Release is idempotent.
type Lease struct {
	mu    sync.Mutex // serialises use of conn
	conn  *pgx.Conn
	key   int64
	shard string
	log   *zap.Logger
	once  sync.Once
	done  bool
}

// Check reports an error when the lock may have been lost: the lease was
// released, or its connection no longer answers (a server restart or a
// network failure ends the session and with it the lock). A nil error
// means the session, and so the lock, was alive at the time of the call.
func (l *Lease) Check(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return errors.New("advisory lock released")
	}
	var held bool
	err := l.conn.QueryRow(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted "+
			"AND objsubid = 1 "+
			"AND objid = ($1::bigint & 4294967295)::oid AND classid = ($1::bigint >> 32)::oid)", l.key).Scan(&held)
	if err != nil {
		return fmt.Errorf("advisory lock on shard %s: %w", l.shard, err)
	}
	if !held {
		return fmt.Errorf("advisory lock on shard %s is no longer held", l.shard)
	}
	return nil
}

// Release releases the lock and closes its connection. It is idempotent
// and safe to call from any goroutine.
func (l *Lease) Release() {
	l.once.Do(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.done = true
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var released bool
		if err := l.conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", l.key).Scan(&released); err != nil || !released {
			// Closing the session releases the lock anyway.
			l.log.Warn("advisory lock release failed", zap.String("shard", l.shard),
				zap.Error(errors.Join(err, errors.New("lock was not held"))))
		}
		closeConn(l.conn)
	})
}

// closeConn closes conn within a short bound.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
