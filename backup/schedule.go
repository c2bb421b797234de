package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Run runs scheduled backups at the slots of BACKUP_SCHEDULE (in UTC unless
// the spec says CRON_TZ=...) until ctx ends, then returns nil. Each slot
// goes through RunScheduled; failures are reported there, not returned.
// With backups or the schedule off it only waits for ctx. Call it once.
func (m *Manager) Run(ctx context.Context) error {
	if m.schedule == nil {
		<-ctx.Done()
		return nil
	}
	m.seedLastSuccess(ctx)
	var last time.Time
	for {
		now := m.now()
		from := now
		if !last.IsZero() && !last.Before(from) {
			// Never the same slot twice, even if the timer fired a little
			// before the wall clock reached it.
			from = last
		}
		next := m.schedule.Next(from)
		if next.IsZero() {
			m.log.Warn("backup schedule has no next slot", zap.String("schedule", m.cfg.Schedule))
			<-ctx.Done()
			return nil
		}
		m.mu.Lock()
		m.nextAt = &next
		m.mu.Unlock()
		timer := time.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		last = next
		_, _ = m.RunScheduled(ctx, next) // reported in metrics, logs and Status
	}
}

// seedLastSuccess fills Status.LastSuccess from the destination when this
// sidecar has made no backup yet (best effort).
func (m *Manager) seedLastSuccess(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	list, err := m.List(ctx)
	if err != nil || len(list) == 0 {
		if err != nil {
			m.log.Warn("backup list failed", zap.Error(err))
		}
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastSuccess == nil {
		m.lastSuccess = &list[0]
	}
}

// RunScheduled runs the scheduled backup of slot, named after the slot
// (brownie-<slot>), so that sidecars sharing a schedule agree on the name.
// It takes the Locker first and skips the slot (nil manifest, nil error)
// when another sidecar holds it, when this sidecar is busy, or when the
// slot's backup already exists, checked under the lock: two sidecars with
// the same schedule therefore make one backup per slot even if the first
// releases the lock before the second tries it. Retention follows a
// success. It is idempotent per slot.
func (m *Manager) RunScheduled(ctx context.Context, slot time.Time) (*Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	name := backupName(slot)
	log := m.log.With(zap.String("backup", name))
	if !m.begin(opBackup) {
		m.metrics.scheduledRuns.WithLabelValues(runSkippedLocked).Inc()
		log.Info("scheduled backup skipped", zap.String("reason", "busy"))
		return nil, nil
	}
	defer m.end()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()

	unlock, ok, err := m.locker.TryLock(ctx)
	if err != nil {
		m.metrics.scheduledRuns.WithLabelValues(runFailed).Inc()
		m.recordFailure(name, err)
		return nil, err
	}
	if !ok {
		m.metrics.scheduledRuns.WithLabelValues(runSkippedLocked).Inc()
		log.Info("scheduled backup skipped", zap.String("reason", "locked"))
		return nil, nil
	}
	defer unlock()
	exists, err := m.bucket.Exists(ctx, manifestKey(name))
	if err != nil {
		m.metrics.scheduledRuns.WithLabelValues(runFailed).Inc()
		err = fmt.Errorf("check backup %s: %w", name, err)
		m.recordFailure(name, err)
		return nil, err
	}
	if exists {
		m.metrics.scheduledRuns.WithLabelValues(runSkippedExists).Inc()
		log.Info("scheduled backup skipped", zap.String("reason", "exists"))
		return nil, nil
	}
	man, err := m.create(ctx, name, slot.UTC(), "scheduled")
	if err != nil {
		m.metrics.scheduledRuns.WithLabelValues(runFailed).Inc()
		return nil, err
	}
	m.metrics.scheduledRuns.WithLabelValues(runCreated).Inc()
	return man, nil
}

// incompleteMaxAge is how old a backup without a manifest must be before
// retention deletes it; younger ones may still be running elsewhere.
const incompleteMaxAge = 24 * time.Hour

// applyRetention deletes, except keep, the complete backups started more
// than RetentionDays before now and the incomplete ones whose name is more
// than a day old. Objects that are not backups, and backups whose manifest
// cannot be read, are never touched. It returns the first error after
// trying every backup.
func (m *Manager) applyRetention(ctx context.Context, keep string) error {
	if m.cfg.RetentionDays <= 0 {
		return nil
	}
	now := m.now()
	cutoff := now.Add(-time.Duration(m.cfg.RetentionDays) * 24 * time.Hour)
	names, err := m.backupNames(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if name == keep {
			continue
		}
		reason := ""
		man, err := m.readManifest(ctx, name)
		switch {
		case errors.Is(err, ErrNotFound):
			if t, ok := nameTime(name); ok && t.Before(now.Add(-incompleteMaxAge)) {
				reason = "incomplete"
			}
		case err != nil:
			m.log.Warn("backup retention skipped", zap.String("backup", name), zap.Error(err))
		case man.StartedAt.Before(cutoff):
			reason = "expired"
		}
		if reason == "" {
			continue
		}
		n, err := m.deleteBackup(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.metrics.retentionDelete.Inc()
		m.log.Info("backup deleted", zap.String("backup", name), zap.String("reason", reason), zap.Int("objects", n))
	}
	return errors.Join(errs...)
}
