package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// Deps are the Manager's collaborators and the facts about the cluster it
// cannot read from its configuration.
type Deps struct {
	// Log receives one event per backup, restore and scheduled slot, and
	// the worker's own events; nil discards.
	Log *zap.Logger
	// Registerer receives the brownie_sidecar_backup_* and
	// brownie_sidecar_restore* metrics; nil uses a private registry.
	Registerer prometheus.Registerer
	// Version is the sidecar version written into manifests.
	Version string
	// Shards returns every shard's current primary, the first being the
	// one whose advisory lock elects the sidecar running a backup. It is
	// called when the worker asks, once per operation.
	Shards func() []Shard
	// Database, User and SSLMode are DB_NAME, DB_USER and DB_SSL_MODE.
	Database string
	User     string
	SSLMode  string
	// Certs returns the sidecar's current client certificate. It is
	// called when the worker asks; the worker writes it to a private
	// directory (0700, key 0600) for the duration of each pg_dump or
	// pg_restore and removes it afterwards.
	Certs CertsFunc
	// Now is the clock for names, manifests and retention, handed to the
	// worker at the start of each operation; nil is time.Now.
	Now func() time.Time
	// LockKey overrides AdvisoryLockKey (tests use it to run independent
	// elections on one server).
	LockKey int64
	// Worker is the path of the backup worker program (brownie-backup);
	// required when backups are enabled.
	Worker string
	// WorkerEnv is the worker's whole environment ("KEY=value"; nil is an
	// empty one). WorkerEnviron builds it without the sidecar's
	// configuration variables.
	WorkerEnv []string
	// WorkerGrace is how long a cancelled worker has to clean up (delete a
	// partial backup) before it is killed; 0 is DefaultWorkerGrace.
	WorkerGrace time.Duration
}

// DefaultWorkerGrace is Deps.WorkerGrace's default.
const DefaultWorkerGrace = 30 * time.Second

// Manager implements Service in the sidecar: it keeps the schedule, the
// one-operation-at-a-time rule, the metrics and the status, and runs each
// operation in a backup worker process (see WorkerRequest). It is safe for
// concurrent use; one backup or restore runs at a time per Manager (others
// get ErrBusy), and one backup at a time across the sidecars sharing the
// advisory lock. It owns the worker processes it starts: cancelling an
// operation's context stops its worker.
//
// With backups disabled (empty BACKUP_PROVIDER) every method but Status and
// Run returns ErrDisabled and Run only waits for its context.
type Manager struct {
	cfg       config.Backup
	log       *zap.Logger
	version   string
	shards    func() []Shard
	certs     CertsFunc
	database  string
	user      string
	sslMode   string
	now       func() time.Time
	lockKey   int64
	worker    string
	workerEnv []string
	grace     time.Duration
	pgDump    string
	pgRestore string
	metrics   *metrics
	schedule  cron.Schedule // nil when scheduled backups are off

	mu            sync.Mutex
	op            string // "" when idle, else "backup" or "restore"
	lastSuccess   *Manifest
	lastFailureAt *time.Time
	lastFailure   string
	nextAt        *time.Time
}

var _ Service = (*Manager)(nil)

// New builds a Manager: it checks that the worker, pg_dump and pg_restore
// exist (no process is started). cfg must have passed config validation.
// The caller must Close the Manager.
func New(cfg config.Backup, deps Deps) (*Manager, error) {
	m := &Manager{
		cfg: cfg, log: deps.Log, version: deps.Version, shards: deps.Shards, certs: deps.Certs,
		database: deps.Database, user: deps.User, sslMode: deps.SSLMode, now: deps.Now,
		lockKey: deps.LockKey, worker: deps.Worker, workerEnv: slices.Clone(deps.WorkerEnv), grace: deps.WorkerGrace,
	}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.grace <= 0 {
		m.grace = DefaultWorkerGrace
	}
	if m.workerEnv == nil {
		m.workerEnv = []string{}
	}
	reg := deps.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	var err error
	if m.metrics, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("backup metrics: %w", err)
	}
	if !cfg.Enabled() {
		return m, nil
	}
	if deps.Shards == nil || deps.Certs == nil || deps.Database == "" || deps.User == "" || deps.SSLMode == "" {
		return nil, errors.New("backup: Deps.Shards, Certs, Database, User and SSLMode are required")
	}
	if cfg.Concurrency < 1 || cfg.Timeout <= 0 {
		return nil, errors.New("backup: BACKUP_CONCURRENCY and BACKUP_TIMEOUT must be positive")
	}
	if cfg.Scheduled() {
		if m.schedule, err = config.BackupScheduleParser.Parse(strings.TrimSpace(cfg.Schedule)); err != nil {
			return nil, fmt.Errorf("BACKUP_SCHEDULE: %w", err)
		}
	}
	if fi, err := os.Stat(m.worker); m.worker == "" || err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("backup worker %q is not an executable file: build and ship brownie-backup beside brownie-sidecar, or set BACKUP_WORKER", m.worker)
	}
	if m.pgDump, err = PGTool(cfg.PGBinDir, "pg_dump"); err != nil {
		return nil, err
	}
	if m.pgRestore, err = PGTool(cfg.PGBinDir, "pg_restore"); err != nil {
		return nil, err
	}
	return m, nil
}

// Close releases nothing today: worker processes end with their
// operations' contexts. It is idempotent.
func (m *Manager) Close() error { return nil }

// Operations, the values of Manager.op.
const (
	opBackup  = "backup"
	opRestore = "restore"
)

// begin marks op as running; false if another operation runs.
func (m *Manager) begin(op string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.op != "" {
		return false
	}
	m.op = op
	m.metrics.running.Set(1)
	return true
}

func (m *Manager) end() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.op = ""
	m.metrics.running.Set(0)
}

// Status reports the configuration, the running operation and the last
// results seen by this sidecar. It does no I/O.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{
		Provider:      m.cfg.Provider,
		Destination:   m.cfg.Destination,
		Schedule:      m.cfg.Schedule,
		RetentionDays: m.cfg.RetentionDays,
		Running:       m.op != "",
		LastFailure:   m.lastFailure,
	}
	if !m.cfg.Scheduled() {
		st.Schedule = config.BackupScheduleOff
	}
	if m.lastSuccess != nil {
		c := cloneManifest(*m.lastSuccess)
		st.LastSuccess = &c
	}
	if m.lastFailureAt != nil {
		t := *m.lastFailureAt
		st.LastFailureAt = &t
	}
	if m.nextAt != nil {
		t := *m.nextAt
		st.NextScheduleAt = &t
	}
	return st
}

func cloneManifest(man Manifest) Manifest {
	man.Shards = slices.Clone(man.Shards)
	return man
}

// opTimeout bounds an operation in the sidecar: the worker applies
// BACKUP_TIMEOUT itself and reports the failure, so the sidecar waits a
// grace period longer before it stops the worker.
func (m *Manager) opTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, m.cfg.Timeout+m.grace)
}

// Create runs a backup now, named after its start time. It fails with
// ErrBusy when this sidecar runs a backup or restore or another sidecar
// holds the backup lock, and with ErrExists when a backup of the same
// second exists. On failure the backup's partial objects are deleted and
// older backups are never touched. After a success, retention runs.
func (m *Manager) Create(ctx context.Context) (*Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	if !m.begin(opBackup) {
		return nil, ErrBusy
	}
	defer m.end()
	ctx, cancel := m.opTimeout(ctx)
	defer cancel()
	res, err := m.runWorker(ctx, WorkerRequest{Op: OpCreate})
	if err != nil {
		m.recordFailure("", err)
		return nil, err
	}
	if res.Error != nil {
		err := errorFromWorker(res.Error)
		if res.Error.Failure {
			m.recordFailure(res.Error.Backup, err)
		}
		return nil, err
	}
	if res.Manifest == nil {
		err := errors.New("backup worker returned no manifest")
		m.recordFailure("", err)
		return nil, err
	}
	m.recordSuccess(res.Manifest, res.RetentionDeleted, "manual")
	return res.Manifest, nil
}

// recordSuccess reports a created backup in the metrics, the log and
// Status.
func (m *Manager) recordSuccess(man *Manifest, retentionDeleted int, trigger string) {
	m.mu.Lock()
	c := cloneManifest(*man)
	m.lastSuccess = &c
	m.mu.Unlock()
	m.metrics.created.Inc()
	m.metrics.lastSuccess.Set(float64(man.FinishedAt.UnixNano()) / 1e9)
	m.metrics.duration.Set(man.FinishedAt.Sub(man.StartedAt).Seconds())
	m.metrics.bytes.Set(float64(man.TotalBytes))
	for _, s := range man.Shards {
		m.metrics.shardBytes.WithLabelValues(s.Shard).Set(float64(s.Bytes))
	}
	m.metrics.retentionDelete.Add(float64(retentionDeleted))
	m.log.Info("backup created", zap.String("backup", man.Name), zap.String("trigger", trigger),
		zap.Int64("bytes", man.TotalBytes), zap.Duration("duration", man.FinishedAt.Sub(man.StartedAt)),
		zap.Int("shards", len(man.Shards)))
}

// recordFailure reports a failed backup in the metrics, the log and Status.
func (m *Manager) recordFailure(name string, err error) {
	m.metrics.failures.Inc()
	now := m.now().UTC()
	m.mu.Lock()
	m.lastFailureAt = &now
	m.lastFailure = err.Error()
	m.mu.Unlock()
	m.log.Error("backup failed", zap.String("backup", name), zap.Error(err))
}

// List returns the complete backups (those with a manifest), newest first.
// Incomplete backups and manifests that cannot be read are left out (the
// latter with a warning).
func (m *Manager) List(ctx context.Context) ([]Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	ctx, cancel := m.opTimeout(ctx)
	defer cancel()
	res, err := m.runWorker(ctx, WorkerRequest{Op: OpList})
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return nil, errorFromWorker(res.Error)
	}
	if res.Manifests == nil {
		return []Manifest{}, nil
	}
	return res.Manifests, nil
}

// Get returns the manifest of a complete backup: ErrInvalidName for a
// malformed name, ErrNotFound for an unknown or incomplete one.
func (m *Manager) Get(ctx context.Context, name string) (*Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	if _, ok := ParseName(name); !ok {
		return nil, fmt.Errorf("%w: backup names look like brownie-20060102T150405Z", ErrInvalidName)
	}
	ctx, cancel := m.opTimeout(ctx)
	defer cancel()
	res, err := m.runWorker(ctx, WorkerRequest{Op: OpGet, Name: name})
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return nil, errorFromWorker(res.Error)
	}
	if res.Manifest == nil {
		return nil, errors.New("backup worker returned no manifest")
	}
	return res.Manifest, nil
}

// Restore restores backup req.BackupName on every shard's current primary.
//
// Nothing is touched until every check passed: the name is valid, an
// in-place restore (empty TargetDatabase) carries Confirm equal to the
// backup name (else ErrConfirmRequired), the backup is complete, its
// shards are the cluster's shards (ErrShardMismatch) and every object has
// its manifest's size and SHA-256, read in full (ErrCorrupt). A target
// database must not exist on any shard (ErrExists); it is created on every
// shard and, if any shard fails, every database this restore created is
// dropped. Each shard is restored by pg_restore --exit-on-error
// --single-transaction --no-owner (in place also --clean --if-exists), so a
// failed shard is rolled back; the object is hashed again as it streams
// and pg_restore is not given its last bytes until the stream matched, so
// an object changed after verification cannot be committed. In place, a
// shard that committed before another failed stays restored: the result
// says which shards did.
//
// The result is returned whenever the restore started (with OK false and
// an error on failure); the error wraps the sentinels above when they
// apply. It fails with ErrBusy while a backup or restore runs.
func (m *Manager) Restore(ctx context.Context, req RestoreRequest) (*RestoreResult, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	db, inPlace, err := CheckRestoreRequest(req, m.database)
	if err != nil {
		return nil, err
	}
	if !m.begin(opRestore) {
		return nil, ErrBusy
	}
	defer m.end()
	ctx, cancel := m.opTimeout(ctx)
	defer cancel()

	start := time.Now()
	log := m.log.With(zap.String("backup", req.BackupName), zap.String("database", db), zap.Bool("in_place", inPlace))
	res, err := m.runWorker(ctx, WorkerRequest{Op: OpRestore, Restore: &req})
	var result *RestoreResult
	if err == nil {
		result = res.Restore
		if res.Error != nil {
			err = errorFromWorker(res.Error)
		} else if result == nil {
			err = errors.New("backup worker returned no restore result")
		}
	}
	m.metrics.restoreDuration.Set(time.Since(start).Seconds())
	if err != nil {
		m.metrics.restores.WithLabelValues("failed").Inc()
		log.Error("restore failed", zap.Error(err))
		return result, err
	}
	m.metrics.restores.WithLabelValues("ok").Inc()
	log.Info("restore finished", zap.Duration("duration", result.Duration))
	return result, nil
}
