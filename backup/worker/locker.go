package worker

import (
	"github.com/brownie/brownie-sidecar/backup"

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
	shards func() ([]backup.Shard, error)
	key    int64
	log    *zap.Logger
}

var _ Locker = (*PGAdvisoryLocker)(nil)

// LockerDeps configures NewPGAdvisoryLocker; the fields mean what they mean
// in Deps.
type LockerDeps struct {
	Log      *zap.Logger
	Shards   func() ([]backup.Shard, error)
	Database string
	User     string
	SSLMode  string
	Certs    backup.CertsFunc
	// TempDir is where the certificate files are briefly written while the
	// connection settings are parsed; empty is the system default.
	TempDir string
	// Key overrides backup.AdvisoryLockKey (tests use it to run independent
	// elections on one server).
	Key int64
}

// NewPGAdvisoryLocker returns a PGAdvisoryLocker. It does no I/O.
func NewPGAdvisoryLocker(deps LockerDeps) *PGAdvisoryLocker {
	key := deps.Key
	if key == 0 {
		key = backup.AdvisoryLockKey
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
	var shards []backup.Shard
	if l.shards != nil {
		var err error
		if shards, err = l.shards(); err != nil {
			return nil, false, err
		}
	}
	if len(shards) == 0 {
		return nil, false, backup.ErrNoShards
	}
	first := shards[0]
	conn, err := l.target.connect(ctx, first, l.target.database)
	if err != nil {
		return nil, false, fmt.Errorf("backup lock on shard %s: %w", first.Name, err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", l.key).Scan(&ok); err != nil {
		closeConn(conn)
		return nil, false, fmt.Errorf("backup lock on shard %s: %w", first.Name, err)
	}
	if !ok {
		closeConn(conn)
		return nil, false, nil
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var released bool
			if err := conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", l.key).Scan(&released); err != nil || !released {
				// Closing the session releases the lock anyway.
				l.log.Warn("backup lock release failed", zap.String("shard", first.Name),
					zap.Error(errors.Join(err, errors.New("lock was not held"))))
			}
			closeConn(conn)
		})
	}, true, nil
}

// closeConn closes conn within a short bound.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
