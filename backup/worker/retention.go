package worker

import (
	"github.com/brownie/brownie-sidecar/backup"

	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// incompleteMaxAge is how old a backup without a manifest must be before
// retention deletes it; younger ones may still be running elsewhere.
const incompleteMaxAge = 24 * time.Hour

// applyRetention deletes, except keep, the complete backups started more
// than RetentionDays before now and the incomplete ones whose name is more
// than a day old. Objects that are not backups, and backups whose manifest
// cannot be read, are never touched. It returns the first error after
// trying every backup, and how many backups it deleted.
func (e *Engine) applyRetention(ctx context.Context, keep string) (int, error) {
	if e.cfg.RetentionDays <= 0 {
		return 0, nil
	}
	now := e.now()
	cutoff := now.Add(-time.Duration(e.cfg.RetentionDays) * 24 * time.Hour)
	names, err := e.backupNames(ctx)
	if err != nil {
		return 0, err
	}
	var errs []error
	deleted := 0
	for _, name := range names {
		if name == keep {
			continue
		}
		reason := ""
		man, err := e.readManifest(ctx, name)
		switch {
		case errors.Is(err, backup.ErrNotFound):
			if t, ok := backup.ParseName(name); ok && t.Before(now.Add(-incompleteMaxAge)) {
				reason = "incomplete"
			}
		case err != nil:
			e.log.Warn("backup retention skipped", zap.String("backup", name), zap.Error(err))
		case man.StartedAt.Before(cutoff):
			reason = "expired"
		}
		if reason == "" {
			continue
		}
		n, err := e.deleteBackup(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		deleted++
		e.log.Info("backup deleted", zap.String("backup", name), zap.String("reason", reason), zap.Int("objects", n))
	}
	return deleted, errors.Join(errs...)
}
