package backup

import (
	"context"
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
// sidecar has made no backup yet (best effort; one worker run).
func (m *Manager) seedLastSuccess(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	list, err := m.List(ctx)
	if err != nil || len(list) == 0 {
		if err != nil && ctx.Err() == nil {
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
// The worker takes the advisory lock first and skips the slot (nil
// manifest, nil error) when another sidecar holds it or when the slot's
// backup already exists, checked under the lock; this sidecar skips it
// when it is busy. Two sidecars with the same schedule therefore make one
// backup per slot even if the first releases the lock before the second
// tries it. Retention follows a success. It is idempotent per slot.
func (m *Manager) RunScheduled(ctx context.Context, slot time.Time) (*Manifest, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	name := Name(slot)
	log := m.log.With(zap.String("backup", name))
	if !m.begin(opBackup) {
		m.metrics.scheduledRuns.WithLabelValues(RunSkippedLocked).Inc()
		log.Info("scheduled backup skipped", zap.String("reason", "busy"))
		return nil, nil
	}
	defer m.end()
	ctx, cancel := m.opTimeout(ctx)
	defer cancel()

	res, err := m.runWorker(ctx, WorkerRequest{Op: OpScheduled, Slot: slot.UTC()})
	if err != nil {
		m.metrics.scheduledRuns.WithLabelValues(RunFailed).Inc()
		m.recordFailure(name, err)
		return nil, err
	}
	switch {
	case res.Outcome == RunSkippedLocked:
		m.metrics.scheduledRuns.WithLabelValues(RunSkippedLocked).Inc()
		log.Info("scheduled backup skipped", zap.String("reason", "locked"))
		return nil, nil
	case res.Outcome == RunSkippedExists:
		m.metrics.scheduledRuns.WithLabelValues(RunSkippedExists).Inc()
		log.Info("scheduled backup skipped", zap.String("reason", "exists"))
		return nil, nil
	case res.Error != nil || res.Manifest == nil:
		m.metrics.scheduledRuns.WithLabelValues(RunFailed).Inc()
		we := res.Error
		if we == nil {
			we = &WorkerError{Message: "backup worker returned no manifest", Failure: true}
		}
		err := errorFromWorker(we)
		if we.Failure {
			m.recordFailure(name, err)
		}
		return nil, err
	}
	m.metrics.scheduledRuns.WithLabelValues(RunCreated).Inc()
	m.recordSuccess(res.Manifest, res.RetentionDeleted, "scheduled")
	return res.Manifest, nil
}
