package worker

import (
	"github.com/brownie/brownie-sidecar/backup"

	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// Options are the Engine's collaborators and the facts about the cluster
// it cannot read from its configuration.
type Options struct {
	// Log receives the progress of the operation; nil discards.
	Log *zap.Logger
	// Version is the sidecar version written into manifests.
	Version string
	// Shards returns every shard's current primary, the first being the
	// one the default Locker uses. It is called once per operation; an
	// error fails the operation.
	Shards func() ([]backup.Shard, error)
	// Database, User and SSLMode are DB_NAME, DB_USER and DB_SSL_MODE.
	Database string
	User     string
	SSLMode  string
	// Certs returns the sidecar's current client certificate. The Engine
	// writes it to a private directory (0700, key 0600) for the duration
	// of each pg_dump or pg_restore and removes it afterwards.
	Certs backup.CertsFunc
	// Now is the clock for names, manifests and retention; nil is
	// time.Now.
	Now func() time.Time
	// Locker elects the sidecar that runs a backup; nil is a
	// PGAdvisoryLocker with LockKey on the first shard's primary.
	Locker Locker
	// LockKey overrides backup.AdvisoryLockKey for the default Locker.
	LockKey int64
	// PGDump and PGRestore are the programs' paths; empty looks them up in
	// BACKUP_PG_BIN_DIR or on PATH.
	PGDump, PGRestore string
}

// Engine performs backup operations on the destination: it creates,
// lists and restores backups and applies retention. The worker process
// runs one operation with it; the sidecar's backup.Manager keeps the
// schedule, the metrics and the status. It owns the bucket it opens (Close
// releases it) and the child processes and private directories of its
// operations. It is safe for concurrent use, but does not serialise
// operations: that is the sidecar's job.
type Engine struct {
	cfg     config.Backup
	log     *zap.Logger
	version string
	shards  func() ([]backup.Shard, error)
	pg      pgTarget
	now     func() time.Time
	locker  Locker

	bucket      *blob.Bucket
	closeBucket func() error
	pgDump      string
	pgRestore   string

	closeOnce sync.Once
	closeErr  error
}

// NewEngine builds an Engine: it opens the destination bucket (no request
// is sent) and finds pg_dump and pg_restore. cfg must be enabled and have
// passed config validation. The caller must Close the Engine.
func NewEngine(cfg config.Backup, opts Options) (*Engine, error) {
	if !cfg.Enabled() {
		return nil, backup.ErrDisabled
	}
	e := &Engine{
		cfg:     cfg,
		log:     opts.Log,
		version: opts.Version,
		shards:  opts.Shards,
		pg: pgTarget{database: opts.Database, user: opts.User, sslMode: opts.SSLMode,
			certs: opts.Certs, tempDir: cfg.TempDir},
		now:    opts.Now,
		locker: opts.Locker,
	}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.now == nil {
		e.now = time.Now
	}
	if opts.Shards == nil || opts.Certs == nil || opts.Database == "" || opts.User == "" || opts.SSLMode == "" {
		return nil, errors.New("backup: Shards, Certs, Database, User and SSLMode are required")
	}
	if cfg.Concurrency < 1 || cfg.Timeout <= 0 {
		return nil, errors.New("backup: BACKUP_CONCURRENCY and BACKUP_TIMEOUT must be positive")
	}
	var err error
	e.pgDump, e.pgRestore = opts.PGDump, opts.PGRestore
	if e.pgDump == "" {
		if e.pgDump, err = backup.PGTool(cfg.PGBinDir, "pg_dump"); err != nil {
			return nil, err
		}
	}
	if e.pgRestore == "" {
		if e.pgRestore, err = backup.PGTool(cfg.PGBinDir, "pg_restore"); err != nil {
			return nil, err
		}
	}
	if e.locker == nil {
		e.locker = NewPGAdvisoryLocker(LockerDeps{
			Log: e.log, Shards: opts.Shards, Database: opts.Database, User: opts.User,
			SSLMode: opts.SSLMode, Certs: opts.Certs, TempDir: cfg.TempDir, Key: opts.LockKey,
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if e.bucket, e.closeBucket, err = openBucket(ctx, cfg); err != nil {
		return nil, err
	}
	return e, nil
}

// Close releases the destination bucket. It does not wait for running
// operations, which fail once the bucket is closed. It is idempotent.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		if e.closeBucket != nil {
			e.closeErr = e.closeBucket()
		}
	})
	return e.closeErr
}

func manifestKey(name string) string       { return name + "/" + backup.ManifestFile }
func objectKey(name, object string) string { return name + "/" + object }

// failed is the result of a failed operation; failure says whether it
// counts as a failed backup (not a refusal).
func failed(err error, failure bool, name string) *backup.WorkerResult {
	return &backup.WorkerResult{Error: backup.NewWorkerError(err, failure, name)}
}

// Create runs a backup now, named after its start time, under the backup
// lock: ErrBusy when another sidecar holds it, ErrExists when a backup of
// the same second exists. On failure the backup's partial objects are
// deleted and older backups are never touched. After a success, retention
// runs. BACKUP_TIMEOUT bounds it.
func (e *Engine) Create(ctx context.Context) *backup.WorkerResult {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	unlock, ok, err := e.locker.TryLock(ctx)
	if err != nil {
		return failed(err, true, "")
	}
	if !ok {
		return failed(fmt.Errorf("%w: another sidecar is running a backup", backup.ErrBusy), false, "")
	}
	defer unlock()

	start := e.now().UTC().Truncate(time.Second)
	name := backup.Name(start)
	exists, err := e.bucket.Exists(ctx, manifestKey(name))
	if err != nil {
		return failed(fmt.Errorf("check backup %s: %w", name, err), true, name)
	}
	if exists {
		return failed(fmt.Errorf("backup %s: %w", name, backup.ErrExists), false, name)
	}
	return e.create(ctx, name, start, "manual")
}

// Scheduled runs the scheduled backup of slot, named after the slot. It
// takes the backup lock first and skips the slot (Outcome
// RunSkippedLocked or RunSkippedExists) when another sidecar holds it or
// when the slot's backup already exists, checked under the lock.
func (e *Engine) Scheduled(ctx context.Context, slot time.Time) *backup.WorkerResult {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	name := backup.Name(slot)
	fail := func(err error) *backup.WorkerResult {
		res := failed(err, true, name)
		res.Outcome = backup.RunFailed
		return res
	}
	unlock, ok, err := e.locker.TryLock(ctx)
	if err != nil {
		return fail(err)
	}
	if !ok {
		return &backup.WorkerResult{Outcome: backup.RunSkippedLocked}
	}
	defer unlock()
	exists, err := e.bucket.Exists(ctx, manifestKey(name))
	if err != nil {
		return fail(fmt.Errorf("check backup %s: %w", name, err))
	}
	if exists {
		return &backup.WorkerResult{Outcome: backup.RunSkippedExists}
	}
	res := e.create(ctx, name, slot.UTC(), "scheduled")
	res.Outcome = backup.RunCreated
	if res.Error != nil {
		res.Outcome = backup.RunFailed
	}
	return res
}

// create makes backup name while the caller holds the lock: it removes
// leftovers of an earlier failed attempt of the same name, dumps every
// shard, then writes the manifest, and applies retention after a success.
func (e *Engine) create(ctx context.Context, name string, start time.Time, trigger string) *backup.WorkerResult {
	log := e.log.With(zap.String("backup", name), zap.String("trigger", trigger))
	log.Info("backup started")
	man, err := e.dumpAll(ctx, name, start, trigger, log)
	if err != nil {
		// Use a context of its own: ctx may be what failed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if n, derr := e.deleteBackup(cctx, name); derr != nil {
			log.Error("backup cleanup failed", zap.Error(derr))
		} else if n > 0 {
			log.Info("backup partial objects deleted", zap.Int("objects", n))
		}
		return failed(err, true, name)
	}
	deleted, err := e.applyRetention(ctx, name)
	if err != nil {
		log.Warn("backup retention failed", zap.Error(err))
	}
	return &backup.WorkerResult{Manifest: man, RetentionDeleted: deleted}
}

// currentShards returns the shards, checked for usable, unique names.
func (e *Engine) currentShards() ([]backup.Shard, error) {
	shards, err := e.shards()
	if err != nil {
		return nil, err
	}
	return backup.CheckShards(shards)
}

// dumpAll dumps every shard, at most cfg.Concurrency at a time, and writes
// the manifest last.
func (e *Engine) dumpAll(ctx context.Context, name string, start time.Time, trigger string, log *zap.Logger) (*backup.Manifest, error) {
	// Leftovers of an earlier attempt at this name (a crash, or a failed
	// cleanup) would otherwise mix with the new objects.
	if n, err := e.deleteBackup(ctx, name); err != nil {
		return nil, fmt.Errorf("remove leftovers of %s: %w", name, err)
	} else if n > 0 {
		log.Info("backup leftovers deleted", zap.Int("objects", n))
	}
	shards, err := e.currentShards()
	if err != nil {
		return nil, err
	}
	creds, err := e.pg.writeCreds()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := creds.remove(); err != nil {
			log.Error("remove private certificate directory", zap.Error(err))
		}
	}()

	results := make([]backup.ShardManifest, len(shards))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.cfg.Concurrency)
	for i, s := range shards {
		g.Go(func() error {
			sm, err := e.dumpShard(gctx, name, s, creds)
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

	man := &backup.Manifest{
		Name:           name,
		StartedAt:      start,
		SidecarVersion: e.version,
		Database:       e.pg.database,
		Shards:         results,
		Trigger:        trigger,
		Format:         backup.FormatCustom,
	}
	for _, s := range results {
		man.TotalBytes += s.Bytes
	}
	man.FinishedAt = e.now().UTC()
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := e.bucket.WriteAll(ctx, manifestKey(name), data, &blob.WriterOptions{ContentType: "application/json"}); err != nil {
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	return man, nil
}

// lockWaitTimeout bounds how long pg_dump waits for each table's ACCESS
// SHARE lock, so that a backup fails instead of queueing behind DDL.
const lockWaitTimeout = "2min"

// dumpShard streams pg_dump's output for shard s into its object, hashing
// and counting it on the way; nothing is written to local disk.
func (e *Engine) dumpShard(ctx context.Context, name string, s backup.Shard, creds *credDir) (backup.ShardManifest, error) {
	sm := backup.ShardManifest{Shard: s.Name, Object: s.Name + backup.DumpSuffix, StartedAt: e.now().UTC()}
	var err error
	if sm.ServerVersion, sm.SchemaVersion, err = e.versions(ctx, s, creds); err != nil {
		return sm, err
	}
	info, err := e.pg.conninfo(ctx, s, e.pg.database, creds)
	if err != nil {
		return sm, err
	}
	args := []string{"--format=custom", "--no-password", "--lock-wait-timeout=" + lockWaitTimeout}
	if e.cfg.CompressionLevel >= 0 {
		args = append(args, "--compress="+strconv.Itoa(e.cfg.CompressionLevel))
	}
	args = append(args, "--dbname="+info)

	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd, stderr := toolCommand(dctx, e.pgDump, creds, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return sm, err
	}
	w, err := e.bucket.NewWriter(dctx, objectKey(name, sm.Object), &blob.WriterOptions{
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
	sm.FinishedAt = e.now().UTC()
	return sm, nil
}

// versions returns the shard's server_version and its Alembic revision(s)
// ("" without an alembic_version table).
func (e *Engine) versions(ctx context.Context, s backup.Shard, creds *credDir) (server, schema string, err error) {
	conn, err := e.pg.connectWith(ctx, s, e.pg.database, creds, false)
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
func (e *Engine) deleteBackup(ctx context.Context, name string) (int, error) {
	if _, ok := backup.ParseName(name); !ok {
		return 0, fmt.Errorf("%w: %q", backup.ErrInvalidName, name)
	}
	var keys []string
	it := e.bucket.List(&blob.ListOptions{Prefix: name + "/"})
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
		if err := e.bucket.Delete(ctx, k); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
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
func (e *Engine) backupNames(ctx context.Context) ([]string, error) {
	var names []string
	it := e.bucket.List(&blob.ListOptions{Delimiter: "/"})
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
		if name := strings.TrimSuffix(obj.Key, "/"); validName(name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// readManifest reads and checks backup name's manifest. It returns
// backup.ErrNotFound when there is none (an unknown or incomplete backup).
func (e *Engine) readManifest(ctx context.Context, name string) (*backup.Manifest, error) {
	data, err := e.bucket.ReadAll(ctx, manifestKey(name))
	if err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil, fmt.Errorf("%w: %s", backup.ErrNotFound, name)
		}
		return nil, fmt.Errorf("read manifest of %s: %w", name, err)
	}
	var man backup.Manifest
	if err := json.Unmarshal(data, &man); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", name, err)
	}
	if err := backup.CheckManifest(name, &man); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", name, err)
	}
	return &man, nil
}

// List returns the complete backups (those with a manifest), newest first.
// Incomplete backups and manifests that cannot be read are left out (the
// latter with a warning).
func (e *Engine) List(ctx context.Context) ([]backup.Manifest, error) {
	if !e.cfg.Enabled() {
		return nil, backup.ErrDisabled
	}
	names, err := e.backupNames(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]backup.Manifest, 0, len(names))
	for _, name := range names {
		man, err := e.readManifest(ctx, name)
		if errors.Is(err, backup.ErrNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			e.log.Warn("backup manifest unreadable", zap.String("backup", name), zap.Error(err))
			continue
		}
		out = append(out, *man)
	}
	slices.SortFunc(out, func(a, b backup.Manifest) int {
		return cmp.Or(b.StartedAt.Compare(a.StartedAt), cmp.Compare(b.Name, a.Name))
	})
	return out, nil
}

// Get returns the manifest of a complete backup: backup.ErrInvalidName for a
// malformed name, backup.ErrNotFound for an unknown or incomplete one.
func (e *Engine) Get(ctx context.Context, name string) (*backup.Manifest, error) {
	if !e.cfg.Enabled() {
		return nil, backup.ErrDisabled
	}
	if _, ok := backup.ParseName(name); !ok {
		return nil, fmt.Errorf("%w: backup names look like brownie-20060102T150405Z", backup.ErrInvalidName)
	}
	return e.readManifest(ctx, name)
}

// validName reports whether name is a backup name.
func validName(name string) bool {
	_, ok := backup.ParseName(name)
	return ok
}
