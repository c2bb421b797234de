package backup

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the package's instruments. Labels are bounded (result, shard
// names from the shard map); none carries a team_id.
type metrics struct {
	lastSuccess     prometheus.Gauge
	duration        prometheus.Gauge
	bytes           prometheus.Gauge
	shardBytes      *prometheus.GaugeVec
	failures        prometheus.Counter
	created         prometheus.Counter
	running         prometheus.Gauge
	scheduledRuns   *prometheus.CounterVec
	retentionDelete prometheus.Counter
	restores        *prometheus.CounterVec
	restoreDuration prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_backup_last_success_timestamp_seconds",
			Help: "Unix time at which the last successful backup made by this sidecar finished.",
		}),
		duration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_backup_duration_seconds",
			Help: "Duration of the last successful backup made by this sidecar.",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_backup_bytes",
			Help: "Size of the last successful backup made by this sidecar (all shards).",
		}),
		shardBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_backup_shard_bytes",
			Help: "Size of each shard's dump in the last successful backup made by this sidecar.",
		}, []string{"shard"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_backup_failures_total",
			Help: "Backups that failed (their partial objects are deleted).",
		}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_backups_created_total",
			Help: "Backups completed by this sidecar.",
		}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_backup_running",
			Help: "1 while this sidecar runs a backup or a restore.",
		}),
		scheduledRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_backup_scheduled_runs_total",
			Help: "Scheduled backup slots seen by this sidecar, by result: created, skipped_locked (another sidecar holds the lock, or this one runs another backup or a restore), skipped_exists (the slot's backup exists), failed.",
		}, []string{"result"}),
		retentionDelete: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_backup_retention_deleted_total",
			Help: "Backups deleted by retention (expired, or incomplete and older than a day).",
		}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_restores_total",
			Help: "Restores by result (ok, failed).",
		}, []string{"result"}),
		restoreDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_restore_duration_seconds",
			Help: "Duration of the last restore run by this sidecar, including checksum verification.",
		}),
	}
	for _, r := range []string{RunCreated, RunSkippedLocked, RunSkippedExists, RunFailed} {
		m.scheduledRuns.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.restores.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{
		m.lastSuccess, m.duration, m.bytes, m.shardBytes, m.failures, m.created, m.running,
		m.scheduledRuns, m.retentionDelete, m.restores, m.restoreDuration,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
