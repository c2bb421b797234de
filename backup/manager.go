package backup

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"go.uber.org/zap"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// Deps are the Manager's collaborators and the facts about the cluster it
// cannot read from its configuration.
type Deps struct {
	// Log receives one event per backup, restore and scheduled slot; nil
	// discards.
	Log *zap.Logger
	// Registerer receives the brownie_sidecar_backup_* and
	// brownie_sidecar_restore* metrics; nil uses a private registry.
	Registerer prometheus.Registerer
	// Version is the sidecar version written into manifests.
	Version string
	// Shards returns every shard's current primary, the first being the
	// one the default Locker uses. It is called once per operation.
	Shards func() []Shard
	// Database, User and SSLMode are DB_NAME, DB_USER and DB_SSL_MODE.
	Database string
	User     string
	SSLMode  string
	// Certs returns the sidecar's current client certificate. The Manager
	// writes it to a private directory (0700, key 0600) for the duration
	// of each pg_dump or pg_restore and removes it afterwards.
	Certs CertsFunc
	// Now is the clock for names, manifests and retention; nil is
	// time.Now.
	Now func() time.Time
	// Locker elects the sidecar that runs a backup; nil is a
	// PGAdvisoryLocker on the first shard's primary.
	Locker Locker
}

// Manager implements Service: it creates, lists and restores backups and
// runs the schedule and retention. It is safe for concurrent use; one
// backup or restore runs at a time per Manager (others get ErrBusy), and
// one backup at a time across the sidecars sharing a Locker. It owns the
// bucket it opens (Close releases it) and the child processes and private
// directories of its operations.
//
// With backups disabled (empty BACKUP_PROVIDER) every method but Status and
// Run returns ErrDisabled and Run only waits for its context.
type Manager struct {
	cfg      config.Backup
	log      *zap.Logger
	version  string
	shards   func() []Shard
	pg       pgTarget
	now      func() time.Time
	locker   Locker
	metrics  *metrics
	schedule cron.Schedule // nil when scheduled backups are off

	bucket      *blob.Bucket
	closeBucket func() error
	pgDump      string
	pgRestore   string

	mu            sync.Mutex
	op            string // "" when idle, else "backup" or "restore"
	lastSuccess   *Manifest
	lastFailureAt *time.Time
	lastFailure   string
	nextAt        *time.Time

	closeOnce sync.Once
	closeErr  error
}

var _ Service = (*Manager)(nil)

// New builds a Manager: it opens the destination bucket (no request is
// sent) and finds pg_dump and pg_restore. cfg must have passed config
// validation. The caller must Close the Manager.
func New(cfg config.Backup, deps Deps) (*Manager, error) {
	m := &Manager{
		cfg:     cfg,
		log:     deps.Log,
		version: deps.Version,
		shards:  deps.Shards,
		pg: pgTarget{database: deps.Database, user: deps.User, sslMode: deps.SSLMode,
			certs: deps.Certs, tempDir: cfg.TempDir},
		now:    deps.Now,
		locker: deps.Locker,
	}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	if m.now == nil {
		m.now = time.Now
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
	if m.pgDump, err = pgTool(cfg.PGBinDir, "pg_dump"); err != nil {
		return nil, err
	}
	if m.pgRestore, err = pgTool(cfg.PGBinDir, "pg_restore"); err != nil {
		return nil, err
	}
	if m.locker == nil {
		m.locker = NewPGAdvisoryLocker(LockerDeps{
			Log: m.log, Shards: deps.Shards, Database: deps.Database, User: deps.User,
			SSLMode: deps.SSLMode, Certs: deps.Certs, TempDir: cfg.TempDir,
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if m.bucket, m.closeBucket, err = openBucket(ctx, cfg); err != nil {
		return nil, err
	}
	return m, nil
}

// Close releases the destination bucket. It does not wait for running
// operations, which fail once the bucket is closed; stop Run and let
// requests finish first. It is idempotent.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		if m.closeBucket != nil {
			m.closeErr = m.closeBucket()
		}
	})
	return m.closeErr
}

// Object names.
const (
	namePrefix   = "brownie-"
	nameLayout   = "20060102T150405Z"
	manifestFile = "manifest.json"
	dumpSuffix   = ".dump"
)

var (
	nameRE  = regexp.MustCompile(`^brownie-[0-9]{8}T[0-9]{6}Z$`)
	shardRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$`)
	// dbNameRE is what a restore's TargetDatabase may be: a plain
	// identifier, quoted anyway.
	dbNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)
)

// backupName names the backup started (or scheduled) at t.
func backupName(t time.Time) string { return namePrefix + t.UTC().Format(nameLayout) }

// nameTime parses a backup name; ok is false for anything that is not one.
func nameTime(name string) (time.Time, bool) {
	if !nameRE.MatchString(name) {
		return time.Time{}, false
	}
	t, err := time.Parse(nameLayout, strings.TrimPrefix(name, namePrefix))
	return t, err == nil
}

func manifestKey(name string) string       { return name + "/" + manifestFile }
func objectKey(name, object string) string { return name + "/" + object }

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
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()

	unlock, ok, err := m.locker.TryLock(ctx)
	if err != nil {
		m.recordFailure("", err)
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: another sidecar is running a backup", ErrBusy)
	}
	defer unlock()

	start := m.now().UTC().Truncate(time.Second)
	name := backupName(start)
	exists, err := m.bucket.Exists(ctx, manifestKey(name))
	if err != nil {
		err = fmt.Errorf("check backup %s: %w", name, err)
		m.recordFailure(name, err)
		return nil, err
	}
	if exists {
		return nil, fmt.Errorf("backup %s: %w", name, ErrExists)
	}
	return m.create(ctx, name, start, "manual")
}

// create makes backup name while the caller holds the lock and the
// operation slot: it removes leftovers of an earlier failed attempt of the
// same name, dumps every shard, then writes the manifest.
func (m *Manager) create(ctx context.Context, name string, start time.Time, trigger string) (*Manifest, error) {
	log := m.log.With(zap.String("backup", name), zap.String("trigger", trigger))
	log.Info("backup started")
	man, err := m.dumpAll(ctx, name, start, trigger, log)
	if err != nil {
		m.recordFailure(name, err)
		// Use a context of its own: ctx may be what failed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if n, derr := m.deleteBackup(cctx, name); derr != nil {
			log.Error("backup cleanup failed", zap.Error(derr))
		} else if n > 0 {
			log.Info("backup partial objects deleted", zap.Int("objects", n))
		}
		return nil, err
	}

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
	log.Info("backup created", zap.Int64("bytes", man.TotalBytes),
		zap.Duration("duration", man.FinishedAt.Sub(man.StartedAt)), zap.Int("shards", len(man.Shards)))

	if err := m.applyRetention(ctx, name); err != nil {
		log.Warn("backup retention failed", zap.Error(err))
	}
	return man, nil
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

// currentShards returns the shards, checked for usable, unique names.
func (m *Manager) currentShards() ([]Shard, error) {
	shards := m.shards()
	if len(shards) == 0 {
		return nil, ErrNoShards
	}
	seen := map[string]bool{}
	for _, s := range shards {
		if !shardRE.MatchString(s.Name) {
			return nil, fmt.Errorf("shard name %q cannot name a backup object", s.Name)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("shard %q appears twice", s.Name)
		}
		seen[s.Name] = true
	}
	return shards, nil
}

// dumpAll dumps every shard, at most cfg.Concurrency at a time, and writes
// the manifest last.
func (m *Manager) dumpAll(ctx context.Context, name string, start time.Time, trigger string, log *zap.Logger) (*Manifest, error) {
	// Leftovers of an earlier attempt at this name (a crash, or a failed
	// cleanup) would otherwise mix with the new objects.
	if n, err := m.deleteBackup(ctx, name); err != nil {
		return nil, fmt.Errorf("remove leftovers of %s: %w", name, err)
	} else if n > 0 {
		log.Info("backup leftovers deleted", zap.Int("objects", n))
	}
	shards, err := m.currentShards()
	if err != nil {
		return nil, err
	}
	creds, err := m.pg.writeCreds()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := creds.remove(); err != nil {
			log.Error("remove private certificate directory", zap.Error(err))
		}
	}()

	results := make([]ShardManifest, len(shards))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(m.cfg.Concurrency)
	for i, s := range shards {
		g.Go(func() error {
			sm, err := m.dumpShard(gctx, name, s, creds)
			if err != nil {
				return fmt.Errorf("shard %s: %w", s.Name, err)
			}
			log.Info("shard dumped", zap.String("shard", s.Name), zap.Int64("bytes", sm.Bytes),
				zap.Duration("duration", sm.FinishedAt.Sub(sm.StartedAt)))
			results[i] = sm
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	man := &Manifest{
		Name:           name,
		StartedAt:      start,
		SidecarVersion: m.version,
		Database:       m.pg.database,
		Shards:         results,
		Trigger:        trigger,
		Format:         formatCustom,
	}
	for _, s := range results {
		man.TotalBytes += s.Bytes
	}
	man.FinishedAt = m.now().UTC()
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := m.bucket.WriteAll(ctx, manifestKey(name), data, &blob.WriterOptions{ContentType: "application/json"}); err != nil {
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	return man, nil
}

// formatCustom is Manifest.Format for pg_dump --format=custom objects.
const formatCustom = "pg_dump-custom"

// lockWaitTimeout bounds how long pg_dump waits for each table's ACCESS
// SHARE lock, so that a backup fails instead of queueing behind DDL.
const lockWaitTimeout = "2min"

// dumpShard streams pg_dump's output for shard s into its object, hashing
// and counting it on the way; nothing is written to local disk.
func (m *Manager) dumpShard(ctx context.Context, name string, s Shard, creds *credDir) (ShardManifest, error) {
	sm := ShardManifest{Shard: s.Name, Object: s.Name + dumpSuffix, StartedAt: m.now().UTC()}
	var err error
	if sm.ServerVersion, sm.SchemaVersion, err = m.versions(ctx, s, creds); err != nil {
		return sm, err
	}
	info, err := m.pg.conninfo(ctx, s, m.pg.database, creds)
	if err != nil {
		return sm, err
	}
	args := []string{"--format=custom", "--no-password", "--lock-wait-timeout=" + lockWaitTimeout}
	if m.cfg.CompressionLevel >= 0 {
		args = append(args, "--compress="+strconv.Itoa(m.cfg.CompressionLevel))
	}
	args = append(args, "--dbname="+info)

	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd, stderr := toolCommand(dctx, m.pgDump, creds, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return sm, err
	}
	w, err := m.bucket.NewWriter(dctx, objectKey(name, sm.Object), &blob.WriterOptions{
		ContentType: "application/octet-stream",
		BufferSize:  16 << 20,
	})
	if err != nil {
		return sm, fmt.Errorf("open object: %w", err)
	}
	if err := cmd.Start(); err != nil {
		cancel() // aborts the upload
		_ = w.Close()
		return sm, fmt.Errorf("start pg_dump: %w", err)
	}
	h := sha256.New()
	var n countWriter
	if _, err := io.Copy(io.MultiWriter(w, h, &n), stdout); err != nil {
		cancel() // stops pg_dump, which may be blocked on a full pipe, and aborts the upload
		_ = cmd.Wait()
		_ = w.Close()
		return sm, fmt.Errorf("upload: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		cancel()
		_ = w.Close()
		if ctx.Err() != nil {
			return sm, fmt.Errorf("pg_dump: %w", context.Cause(ctx))
		}
		return sm, toolError("pg_dump", err, stderr)
	}
	if err := w.Close(); err != nil {
		return sm, fmt.Errorf("upload: %w", err)
	}
	sm.Bytes = int64(n)
	sm.SHA256 = hex.EncodeToString(h.Sum(nil))
	sm.FinishedAt = m.now().UTC()
	return sm, nil
}

// versions returns the shard's server_version and its Alembic revision(s)
// ("" without an alembic_version table).
func (m *Manager) versions(ctx context.Context, s Shard, creds *credDir) (server, schema string, err error) {
	conn, err := m.pg.connectWith(ctx, s, m.pg.database, creds, false)
	if err != nil {
		return "", "", err
	}
	defer closeConn(conn)
	var hasAlembic bool
	if err := conn.QueryRow(ctx,
		"SELECT current_setting('server_version'), to_regclass('public.alembic_version') IS NOT NULL",
	).Scan(&server, &hasAlembic); err != nil {
		return "", "", fmt.Errorf("read server version: %w", err)
	}
	if hasAlembic {
		if err := conn.QueryRow(ctx,
			"SELECT coalesce(string_agg(version_num, ',' ORDER BY version_num), '') FROM public.alembic_version",
		).Scan(&schema); err != nil {
			return "", "", fmt.Errorf("read alembic_version: %w", err)
		}
	}
	return server, schema, nil
}

// countWriter counts the bytes written to it.
type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// deleteBackup deletes every object of backup name, the manifest first so
// that an interrupted deletion leaves an incomplete backup rather than a
// complete-looking one with objects missing. It returns how many objects
// it deleted.
func (m *Manager) deleteBackup(ctx context.Context, name string) (int, error) {
	if _, ok := nameTime(name); !ok {
		return 0, fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	var keys []string
	it := m.bucket.List(&blob.ListOptions{Prefix: name + "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", name, err)
		}
		keys = append(keys, obj.Key)
	}
	mk := manifestKey(name)
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(-cmp.Compare(boolInt(a == mk), boolInt(b == mk)), cmp.Compare(a, b))
	})
	for i, k := range keys {
		if err := m.bucket.Delete(ctx, k); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return i, fmt.Errorf("delete %s: %w", k, err)
		}
	}
	return len(keys), nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// backupNames lists the names of the backups under the prefix, complete or
// not. Other objects are ignored.
func (m *Manager) backupNames(ctx context.Context) ([]string, error) {
	var names []string
	it := m.bucket.List(&blob.ListOptions{Delimiter: "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list backups: %w", err)
		}
		if !obj.IsDir {
			continue
		}
		if name := strings.TrimSuffix(obj.Key, "/"); nameRE.MatchString(name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// readManifest reads and checks backup name's manifest. It returns
// ErrNotFound when there is none (an unknown or incomplete backup).
func (m *Manager) readManifest(ctx context.Context, name string) (*Manifest, error) {
	data, err := m.bucket.ReadAll(ctx, manifestKey(name))
	if err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		return nil, fmt.Errorf("read manifest of %s: %w", name, err)
	}
	var man Manifest
	if err := json.Unmarshal(data, &man); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", name, err)
	}
	if err := checkManifest(name, &man); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", name, err)
	}
	return &man, nil
}

// checkManifest rejects a manifest that does not describe backup name or
// whose object names could leave the backup's directory.
func checkManifest(name string, man *Manifest) error {
	if man.Name != name {
		return fmt.Errorf("names backup %q", man.Name)
	}
	if len(man.Shards) == 0 {
		return errors.New("lists no shard")
	}
	seen := map[string]bool{}
	for _, s := range man.Shards {
		if !shardRE.MatchString(s.Shard) || s.Object != s.Shard+dumpSuffix || seen[s.Shard] {
			return fmt.Errorf("shard entry %q/%q is invalid", s.Shard, s.Object)
		}
		seen[s.Shard] = true
		if len(s.SHA256) != sha256.Size*2 || s.Bytes < 0 {
			return fmt.Errorf("shard %q has an invalid size or checksum", s.Shard)
		}
	}
	return nil
}

// List returns the complete backups (those with a manifest), newest first.
// Incomplete backups and manifests that cannot be read are left out (the
// latter with a warning).
func (m *Manager) List(ctx context.Context) ([]Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	names, err := m.backupNames(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Manifest, 0, len(names))
	for _, name := range names {
		man, err := m.readManifest(ctx, name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			m.log.Warn("backup manifest unreadable", zap.String("backup", name), zap.Error(err))
			continue
		}
		out = append(out, *man)
	}
	slices.SortFunc(out, func(a, b Manifest) int {
		return cmp.Or(b.StartedAt.Compare(a.StartedAt), cmp.Compare(b.Name, a.Name))
	})
	return out, nil
}

// Get returns the manifest of a complete backup: ErrInvalidName for a
// malformed name, ErrNotFound for an unknown or incomplete one.
func (m *Manager) Get(ctx context.Context, name string) (*Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	if _, ok := nameTime(name); !ok {
		return nil, fmt.Errorf("%w: backup names look like brownie-20060102T150405Z", ErrInvalidName)
	}
	return m.readManifest(ctx, name)
}
