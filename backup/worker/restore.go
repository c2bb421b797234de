package worker

import (
	"github.com/brownie/brownie-sidecar/backup"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"
)

// inPlaceLockTimeout bounds each lock wait of an in-place restore, so that
// a restore blocked by the application's transactions fails (and rolls
// back) instead of queueing every query behind its DROP statements.
const inPlaceLockTimeout = "60s"

// Restore restores backup req.BackupName on every shard's current primary.
//
// Nothing is touched until every check passed: the name is valid, an
// in-place restore (empty TargetDatabase) carries Confirm equal to the
// backup name (else backup.ErrConfirmRequired), the backup is complete, its
// shards are the cluster's shards (backup.ErrShardMismatch) and every object has
// its manifest's size and SHA-256, read in full (backup.ErrCorrupt). A target
// database must not exist on any shard (backup.ErrExists); it is created on every
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
// apply. BACKUP_TIMEOUT bounds it. It does not serialise operations: the
// sidecar runs one backup or restore at a time.
func (e *Engine) Restore(ctx context.Context, req backup.RestoreRequest) (*backup.RestoreResult, error) {
	db, inPlace, err := backup.CheckRestoreRequest(req, e.pg.database)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	start := time.Now()
	log := e.log.With(zap.String("backup", req.BackupName), zap.String("database", db), zap.Bool("in_place", inPlace))
	res, err := e.restore(ctx, req.BackupName, db, inPlace, log)
	if res != nil {
		res.Duration = time.Since(start)
	}
	return res, err
}

func (e *Engine) restore(ctx context.Context, name, db string, inPlace bool, log *zap.Logger) (*backup.RestoreResult, error) {
	man, err := e.readManifest(ctx, name)
	if err != nil {
		return nil, err
	}
	current, err := e.currentShards()
	if err != nil {
		return nil, err
	}
	byName := make(map[string]backup.Shard, len(current))
	for _, s := range current {
		byName[s.Name] = s
	}
	shards := make([]backup.Shard, len(man.Shards))
	for i, sm := range man.Shards {
		s, ok := byName[sm.Shard]
		if !ok {
			return nil, fmt.Errorf("%w: backup has shard %s, the cluster does not", backup.ErrShardMismatch, sm.Shard)
		}
		shards[i] = s
		delete(byName, sm.Shard)
	}
	if len(byName) > 0 {
		extra := slices.Sorted(maps.Keys(byName))
		return nil, fmt.Errorf("%w: the cluster has shards %s, the backup does not", backup.ErrShardMismatch, strings.Join(extra, ", "))
	}

	if err := e.verifyAll(ctx, man); err != nil {
		return nil, err
	}
	log.Info("backup verified", zap.Int64("bytes", man.TotalBytes))

	res := &backup.RestoreResult{BackupName: name, Database: db, Shards: make([]backup.ShardRestoreResult, len(shards))}
	for i, s := range shards {
		res.Shards[i].Shard = s.Name
	}
	creds, err := e.pg.writeCreds()
	if err != nil {
		return res, err
	}
	defer func() {
		if err := creds.remove(); err != nil {
			log.Error("remove private certificate directory", zap.Error(err))
		}
	}()

	var created []backup.Shard
	if !inPlace {
		created, err = e.createDatabases(ctx, shards, db, creds)
		if err != nil {
			e.dropDatabases(ctx, created, db, creds, log)
			for i := range res.Shards {
				res.Shards[i].Error = err.Error()
			}
			return res, err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.cfg.Concurrency)
	for i, s := range shards {
		g.Go(func() error {
			if gctx.Err() != nil {
				res.Shards[i].Error = "not started: another shard failed"
				return gctx.Err()
			}
			t0 := time.Now()
			err := e.restoreShard(gctx, name, man.Shards[i], s, db, inPlace, creds)
			res.Shards[i].Duration = time.Since(t0)
			if err != nil {
				res.Shards[i].Error = err.Error()
				return fmt.Errorf("shard %s: %w", s.Name, err)
			}
			res.Shards[i].OK = true
			log.Info("shard restored", zap.String("shard", s.Name), zap.Duration("duration", res.Shards[i].Duration))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if !inPlace {
			e.dropDatabases(ctx, created, db, creds, log)
			for i := range res.Shards {
				res.Shards[i].OK = false
			}
		}
		return res, err
	}
	res.OK = true
	return res, nil
}

// verifyAll reads every object of the backup in full and checks its size
// and SHA-256 against the manifest.
func (e *Engine) verifyAll(ctx context.Context, man *backup.Manifest) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.cfg.Concurrency)
	for _, sm := range man.Shards {
		g.Go(func() error {
			r, err := e.bucket.NewReader(gctx, objectKey(man.Name, sm.Object), nil)
			if err != nil {
				if gcerrors.Code(err) == gcerrors.NotFound {
					return fmt.Errorf("%w: shard %s: object %s is missing", backup.ErrCorrupt, sm.Shard, sm.Object)
				}
				return fmt.Errorf("shard %s: read %s: %w", sm.Shard, sm.Object, err)
			}
			defer r.Close()
			if r.Size() != sm.Bytes {
				return fmt.Errorf("%w: shard %s: object %s has %d bytes, the manifest says %d", backup.ErrCorrupt, sm.Shard, sm.Object, r.Size(), sm.Bytes)
			}
			h := sha256.New()
			n, err := io.Copy(h, r)
			if err != nil {
				return fmt.Errorf("shard %s: read %s: %w", sm.Shard, sm.Object, err)
			}
			if n != sm.Bytes || hex.EncodeToString(h.Sum(nil)) != sm.SHA256 {
				return fmt.Errorf("%w: shard %s: object %s has SHA-256 %x (%d bytes), the manifest says %s (%d bytes)",
					backup.ErrCorrupt, sm.Shard, sm.Object, h.Sum(nil), n, sm.SHA256, sm.Bytes)
			}
			return nil
		})
	}
	return g.Wait()
}

// createDatabases creates database db on every shard's primary, like the
// live database (encoding, collation, ctype) and from template0, after
// checking that it exists on none. It returns the shards where it created
// it, also on error.
func (e *Engine) createDatabases(ctx context.Context, shards []backup.Shard, db string, creds *credDir) ([]backup.Shard, error) {
	type liveDB struct{ encoding, collate, ctype string }
	live := make([]liveDB, len(shards))
	for i, s := range shards {
		conn, err := e.pg.connectWith(ctx, s, e.pg.database, creds, false)
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", s.Name, err)
		}
		var exists bool
		err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists)
		if err == nil {
			err = conn.QueryRow(ctx,
				"SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = current_database()",
			).Scan(&live[i].encoding, &live[i].collate, &live[i].ctype)
		}
		closeConn(conn)
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", s.Name, err)
		}
		if exists {
			return nil, fmt.Errorf("target database %s on shard %s: %w", db, s.Name, backup.ErrExists)
		}
	}
	var created []backup.Shard
	for i, s := range shards {
		conn, err := e.pg.connectWith(ctx, s, e.pg.database, creds, false)
		if err != nil {
			return created, fmt.Errorf("shard %s: %w", s.Name, err)
		}
		_, err = conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE template0 ENCODING %s LC_COLLATE %s LC_CTYPE %s",
			quoteIdent(db), quoteLiteral(live[i].encoding), quoteLiteral(live[i].collate), quoteLiteral(live[i].ctype)))
		closeConn(conn)
		if err != nil {
			return created, fmt.Errorf("shard %s: create database %s: %w", s.Name, db, err)
		}
		created = append(created, s)
	}
	return created, nil
}

// dropDatabases drops database db on the given shards, best effort: it
// runs after a failed restore, whose context may be over.
func (e *Engine) dropDatabases(ctx context.Context, shards []backup.Shard, db string, creds *credDir, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, s := range shards {
		conn, err := e.pg.connectWith(ctx, s, e.pg.database, creds, false)
		if err == nil {
			if _, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(db)); err != nil {
				// A pg_restore backend may still be on its way out.
				_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(db)+" WITH (FORCE)")
			}
			closeConn(conn)
		}
		if err != nil {
			log.Error("restore cleanup failed", zap.String("shard", s.Name), zap.Error(err))
			continue
		}
		log.Info("restore target dropped", zap.String("shard", s.Name))
	}
}

// restoreShard streams the shard's object into pg_restore.
func (e *Engine) restoreShard(ctx context.Context, name string, sm backup.ShardManifest, s backup.Shard, db string, inPlace bool, creds *credDir) error {
	var extra []string
	if inPlace {
		extra = []string{"options", "-c lock_timeout=" + inPlaceLockTimeout}
	}
	info, err := e.pg.conninfo(ctx, s, db, creds, extra...)
	if err != nil {
		return err
	}
	args := []string{"--exit-on-error", "--single-transaction", "--no-owner", "--no-password"}
	if inPlace {
		args = append(args, "--clean", "--if-exists")
	}
	args = append(args, "--dbname="+info)

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r, err := e.bucket.NewReader(rctx, objectKey(name, sm.Object), nil)
	if err != nil {
		return fmt.Errorf("read %s: %w", sm.Object, err)
	}
	defer r.Close()
	cmd, stderr := toolCommand(rctx, e.pgRestore, creds, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pg_restore: %w", err)
	}
	feedErr := feedVerified(stdin, r, sm.Bytes, sm.SHA256)
	if errors.Is(feedErr, backup.ErrCorrupt) || (feedErr != nil && !isBrokenPipe(feedErr)) {
		// Kill pg_restore before it can see the end of its input: it has
		// not had the held-back tail, so it has not committed.
		cancel()
		_ = cmd.Wait()
		return feedErr
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("pg_restore: %w", context.Cause(ctx))
		}
		return toolError("pg_restore", err, stderr)
	}
	return feedErr
}

// holdBack is how many bytes at the end of an object pg_restore gets only
// after the whole object matched its manifest. A custom-format archive
// ends with the end of its last data block, so pg_restore cannot finish,
// and commit, without them.
const holdBack = 64

// feedVerified copies src to dst, hashing it, and writes the last holdBack
// bytes only once the whole of src has wantSize bytes and SHA-256 wantSHA.
// It returns an error wrapping backup.ErrCorrupt on a mismatch.
func feedVerified(dst io.Writer, src io.Reader, wantSize int64, wantSHA string) error {
	h := sha256.New()
	buf := make([]byte, 256<<10)
	held := make([]byte, 0, holdBack)
	var n int64
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			chunk := buf[:k]
			h.Write(chunk)
			n += int64(k)
			if n > wantSize {
				return fmt.Errorf("%w: object is longer than the manifest says", backup.ErrCorrupt)
			}
			if emit := len(held) + len(chunk) - holdBack; emit > 0 {
				fromHeld := min(emit, len(held))
				if _, err := dst.Write(held[:fromHeld]); err != nil {
					return err
				}
				fromChunk := emit - fromHeld
				if _, err := dst.Write(chunk[:fromChunk]); err != nil {
					return err
				}
				next := make([]byte, 0, holdBack)
				next = append(next, held[fromHeld:]...)
				held = append(next, chunk[fromChunk:]...)
			} else {
				held = append(held, chunk...)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read object: %w", rerr)
		}
	}
	if n != wantSize || hex.EncodeToString(h.Sum(nil)) != wantSHA {
		return fmt.Errorf("%w: object changed since it was verified", backup.ErrCorrupt)
	}
	_, err := dst.Write(held)
	return err
}

// isBrokenPipe reports whether err is a write to a child that exited; the
// child's own exit status then says why.
func isBrokenPipe(err error) bool {
	return errors.Is(err, io.ErrClosedPipe) || errors.Is(err, syscall.EPIPE)
}

// quoteLiteral quotes an SQL string literal (standard_conforming_strings
// on).
func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
