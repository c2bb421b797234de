// Package metrics defines the sidecar's Prometheus metrics on an injected
// registry. Names use the brownie_sidecar_ prefix; labels are bounded
// (shard, role, code class, direction, reason) and never carry a team_id.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the instruments components update directly. Values that
// already live in a component (pool sizes, certificate state) are exported
// by collectors reading them at scrape time instead. Safe for concurrent use.
type Metrics struct {
	ClientsAccepted prometheus.Counter
	ClientsRejected *prometheus.CounterVec // reason
	ClientsActive   prometheus.Gauge
	ClientsDormant  prometheus.Gauge
	PoolWait        *prometheus.HistogramVec // shard, role
	UpstreamDials   *prometheus.CounterVec   // shard, role, result
	BytesRelayed    *prometheus.CounterVec   // direction
	Errors          *prometheus.CounterVec   // source, class
	CancelRequests  *prometheus.CounterVec   // result
	CancelsInFlight prometheus.Gauge
	SchemaChanges   prometheus.Counter
	StmtCache       *prometheus.CounterVec // result: hit, miss, reprepare, eviction
	PinnedSessions  *prometheus.GaugeVec   // reason
	PinRefusals     *prometheus.CounterVec // reason
	SettingsSyncs   prometheus.Counter
	Transactions    prometheus.Counter

	// QueryDuration is the time from a client request (Query, Sync,
	// FunctionCall) to its ReadyForQuery, by shard and role.
	QueryDuration *prometheus.HistogramVec

	// Routing and health.
	RouteDecisions    *prometheus.CounterVec // kind, reason, role
	RouteErrors       *prometheus.CounterVec // code
	Failovers         *prometheus.CounterVec // shard
	HostUp            *prometheus.GaugeVec   // shard, addr
	HostRole          *prometheus.GaugeVec   // shard, addr: 1 primary, 0 standby
	ReplicaLagSeconds *prometheus.GaugeVec   // shard, addr
	ReplicaLagBytes   *prometheus.GaugeVec   // shard, addr
	HostBanned        *prometheus.GaugeVec   // shard, addr: 1 while left out of reads
	// HealthCheckTimeouts counts health checks left unanswered within
	// their budget, by shard, addr and verdict (busy: the host answered
	// pooled requests meanwhile and stays up; silent: it is marked down).
	HealthCheckTimeouts *prometheus.CounterVec
	ShardMapReloads     *prometheus.CounterVec // result
	ShardMapValid       prometheus.Gauge

	// FanOuts counts client requests run on several shards at once, by
	// kind (read, write) and outcome (ok, error); FanOutShards is how many
	// shards each one used. TwoPhaseCommits counts the two-phase commits
	// of writes spanning shards by outcome (committed, rolled_back,
	// unknown); TwoPhaseRecovered the prepared parts left behind that the
	// recovery finished, by action (committed, rolled_back).
	FanOuts           *prometheus.CounterVec
	FanOutShards      prometheus.Histogram
	TwoPhaseCommits   *prometheus.CounterVec
	TwoPhaseRecovered *prometheus.CounterVec
	// CrossShardTx counts client transactions that spanned shards, by
	// outcome (committed, rolled_back, unknown, or moved: a transaction
	// that had only read replicated tables moved to its statement's shard
	// instead) and number of shards (1, 2, 3+). MergedReads counts reads
	// spanning shards whose rows were merged, by kind (order, limit,
	// aggregate, group, distinct); Refused counts statements refused as
	// impossible to run exactly across shards, by reason.
	CrossShardTx *prometheus.CounterVec
	MergedReads  *prometheus.CounterVec
	Refused      *prometheus.CounterVec
	// ReadsAhead counts reads of nothing or of replicated tables that ran
	// ahead of their transaction's deferred BEGIN, so the BEGIN went to
	// the shard its other statements need.
	ReadsAhead prometheus.Counter
	// QuietWaitsRescued counts relay waits after a quiet answer that the
	// idle sweep ended because the server's bytes had arrived before the
	// wait began (proxy/quiet.go): each is a message the server sent
	// unasked, relayed up to 1.5 × CLIENT_IDLE_RELEASE late.
	QuietWaitsRescued prometheus.Counter

	// Failover: FailoverWaiting counts the statements (and new
	// transactions) waiting now for a shard's primary, by shard;
	// FailoverWaits counts the waits that ended, by shard and result
	// (resumed, timed_out, canceled), and FailoverWaitSeconds how long
	// they lasted. Promotions counts primaries chosen in place of a failed
	// one, by shard, standby (synchronous, asynchronous, unknown: what the
	// promoted host was to the failed primary at the last check that saw
	// it) and decision (accepted, refused: a synchronous shard moves
	// writes only to a host that was its primary's synchronous standby).
	// SyncStandby is 1 for a standby its primary last reported as a
	// synchronous standby (sync_state sync), by shard and addr.
	FailoverWaiting     *prometheus.GaugeVec
	FailoverWaits       *prometheus.CounterVec
	FailoverWaitSeconds *prometheus.HistogramVec
	Promotions          *prometheus.CounterVec
	SyncStandby         *prometheus.GaugeVec
	// UpstreamsLost counts upstream connections that died under a
	// session, by shard, role and outcome: replaced (the session was idle
	// on it with no state there and went on with a new connection),
	// retried (it died running a read, which ran again), finished (it died
	// after a read's whole answer, before its ReadyForQuery, which the
	// sidecar sent in its place) or session_ended (the session ended with
	// one error).
	UpstreamsLost *prometheus.CounterVec

	// ToUpstream and ToClient are the BytesRelayed children, resolved once.
	ToUpstream, ToClient prometheus.Counter
}

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ClientsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_client_connections_accepted_total",
			Help: "Client connections accepted on the listeners.",
		}),
		ClientsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_client_connections_rejected_total",
			Help: "Client connections refused before a session started, by reason.",
		}, []string{"reason"}),
		ClientsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_client_connections",
			Help: "Client connections currently open.",
		}),
		ClientsDormant: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_client_connections_dormant",
			Help: "Client connections idle past CLIENT_IDLE_RELEASE, waiting without a read buffer.",
		}),
		PoolWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "brownie_sidecar_pool_wait_seconds",
			Help:    "Time clients waited for an upstream connection.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 30},
		}, []string{"shard", "role"}),
		UpstreamDials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_upstream_dials_total",
			Help: "Upstream connection attempts, by result (ok, or the SQLSTATE class of the failure).",
		}, []string{"shard", "role", "result"}),
		BytesRelayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_relayed_bytes_total",
			Help: "Protocol bytes relayed, by direction.",
		}, []string{"direction"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_errors_total",
			Help: "ErrorResponses sent to clients, by source (sidecar or upstream) and SQLSTATE class.",
		}, []string{"source", "class"}),
		CancelRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_cancel_requests_total",
			Help: "Cancel requests received from clients, by result: forwarded (delivered to the upstream backend while the client's request ran there), queued (the request was still waiting for an upstream connection: cancelled there, never sent), too_late (the request ended before the cancel could be delivered: dropped), idle (nothing running), unknown (no such backend key), failed (the upstream could not be reached).",
		}, []string{"result"}),
		CancelsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_cancels_in_flight",
			Help: "Cancel requests being delivered to an upstream backend; the backend's connection is not given to another client meanwhile.",
		}),
		SchemaChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_schema_changes_total",
			Help: "Schema changes seen (DDL sent through the sidecar, or upstream errors only a schema change causes); statements prepared after one are prepared afresh upstream.",
		}),
		StmtCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_prepared_statements_total",
			Help: "Protocol-level prepared statement handling: hit (already on the upstream), miss (prepared), reprepare (prepared again on another upstream), eviction (closed by the per-connection LRU).",
		}, []string{"result"}),
		PinnedSessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_pinned_sessions",
			Help: "Transaction-pooled sessions pinned to their upstream connection, by the first reason.",
		}, []string{"reason"}),
		PinRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_pin_refusals_total",
			Help: "Statements refused with 0A000 because POOL_PIN_POLICY=error, by reason.",
		}, []string{"reason"}),
		SettingsSyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_settings_syncs_total",
			Help: "Internal statements applying or reading back client session settings on an upstream.",
		}),
		Transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_upstream_attachments_total",
			Help: "Times a client session took an upstream connection (once per session in session mode, per transaction in transaction mode).",
		}),
		QueryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "brownie_sidecar_query_duration_seconds",
			Help:    "Time from a client request (Query, Sync, FunctionCall) to its ReadyForQuery, by shard and role.",
			Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"shard", "role"}),
		RouteDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_route_decisions_total",
			Help: "Statements routed, by decision kind (any, one, some, all), reason and role (primary, replica).",
		}, []string{"kind", "reason", "role"}),
		RouteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_route_errors_total",
			Help: "Statements refused by routing, by SQLSTATE.",
		}, []string{"code"}),
		Failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_primary_changes_total",
			Help: "Times a shard's writes moved to another host (a promoted standby).",
		}, []string{"shard"}),
		HostUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_host_up",
			Help: "1 when the host answered its last health check.",
		}, []string{"shard", "addr"}),
		HostRole: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_host_is_primary",
			Help: "1 when the host reported it is not in recovery at its last health check.",
		}, []string{"shard", "addr"}),
		ReplicaLagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_replica_lag_seconds",
			Help: "Age of the last transaction a standby replayed while it has WAL left to replay.",
		}, []string{"shard", "addr"}),
		ReplicaLagBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_replica_lag_bytes",
			Help: "WAL distance between a standby's replayed position and its primary's.",
		}, []string{"shard", "addr"}),
		HostBanned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brownie_sidecar_host_banned",
			Help: "1 while the host gets no reads because it failed a health check or a connection (for REPLICA_BAN_TIME), as of the last health check.",
		}, []string{"shard", "addr"}),
		HealthCheckTimeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_health_check_timeouts_total",
			Help: "Health checks left unanswered within HEALTH_CHECK_TIMEOUT, by verdict: busy (pooled connections to the host got answers meanwhile, so it stays up) or silent (it is marked down).",
		}, []string{"shard", "addr", "verdict"}),
		ShardMapReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_shard_map_reloads_total",
			Help: "Shard map file reloads, by result (ok, invalid).",
		}, []string{"result"}),
		ShardMapValid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_sidecar_shard_map_valid",
			Help: "0 while the shard map file on disk is refused (the previous map keeps serving).",
		}),
		FanOuts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_fanouts_total",
			Help: "Client requests run on several shards at once, by kind (read, write) and outcome (ok, error).",
		}, []string{"kind", "outcome"}),
		FanOutShards: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "brownie_sidecar_fanout_shards",
			Help:    "Number of shards each fan-out ran on.",
			Buckets: []float64{2, 3, 4, 6, 8, 12, 16, 32, 64},
		}),
		TwoPhaseCommits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_two_phase_commits_total",
			Help: "Two-phase commits of writes spanning shards, by outcome: committed, rolled_back (a shard failed before the decision) or unknown (the connection to the first shard broke while committing; the recovery finishes it).",
		}, []string{"outcome"}),
		TwoPhaseRecovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_two_phase_recovered_total",
			Help: "Prepared parts of writes spanning shards, left behind by a failed or crashed sidecar, that the recovery committed or rolled back.",
		}, []string{"action"}),
		CrossShardTx: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_cross_shard_transactions_total",
			Help: "Client transactions that spanned shards, by outcome (committed, rolled_back, unknown, moved) and number of shards (1, 2, 3+).",
		}, []string{"outcome", "shards"}),
		ReadsAhead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_reads_ahead_of_begin_total",
			Help: "Reads of nothing or of replicated tables that ran ahead of their READ COMMITTED transaction's BEGIN, so the BEGIN went to the shard its other statements need.",
		}),
		QuietWaitsRescued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brownie_sidecar_quiet_waits_rescued_total",
			Help: "Waits for the server after a quiet answer that the idle sweep ended because bytes the server sent unasked (a notification, an error) had arrived just before the wait began; each reached its client up to 1.5 times CLIENT_IDLE_RELEASE late.",
		}),
		MergedReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_merged_reads_total",
			Help: "Reads spanning shards whose rows the sidecar merged, by kind: order, limit, aggregate, group, distinct (a read may count under several).",
		}, []string{"kind"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_cross_shard_refused_total",
			Help: "Statements refused with 0A000 because they cannot run exactly across shards, by reason.",
		}, []string{"reason"}),
	}
	m.FailoverWaiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "brownie_sidecar_failover_waiting",
		Help: "Statements and new transactions waiting now for their shard's primary to be back or replaced (up to FAILOVER_WAIT).",
	}, []string{"shard"})
	m.FailoverWaits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "brownie_sidecar_failover_waits_total",
		Help: "Waits for a shard's primary that ended, by result: resumed (a primary answered), timed_out (FAILOVER_WAIT passed: 08006), canceled (the sidecar stopped).",
	}, []string{"shard", "result"})
	m.FailoverWaitSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "brownie_sidecar_failover_wait_seconds",
		Help:    "How long statements waited for their shard's primary.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60},
	}, []string{"shard"})
	m.Promotions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "brownie_sidecar_failover_promotions_total",
		Help: "Hosts found answering as a primary in place of a failed one, by standby (synchronous, asynchronous, unknown: what the host was to the failed primary at its last check) and decision (accepted; refused: the shard is synchronous and the host was not its synchronous standby).",
	}, []string{"shard", "standby", "decision"})
	m.SyncStandby = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "brownie_sidecar_host_synchronous_standby",
		Help: "1 when the host's primary last reported it as a synchronous standby (shards marked synchronous only).",
	}, []string{"shard", "addr"})
	m.UpstreamsLost = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "brownie_sidecar_upstream_lost_total",
		Help: "Upstream connections that died under a client session, by outcome: replaced (the session was idle on it with no state there and takes a new connection at its next statement), retried (it died running a read, which ran again), finished (it died after a read's whole answer but its ReadyForQuery, which the sidecar sent), session_ended (the session ended with one error).",
	}, []string{"shard", "role", "outcome"})
	reg.MustRegister(m.FailoverWaiting, m.FailoverWaits, m.FailoverWaitSeconds, m.Promotions, m.SyncStandby, m.UpstreamsLost)
	m.ShardMapValid.Set(1)
	for _, o := range []string{"committed", "rolled_back", "unknown"} {
		m.TwoPhaseCommits.WithLabelValues(o) // exported at 0, for alerts on increase()
	}
	for _, r := range []string{"ok", "invalid"} {
		m.ShardMapReloads.WithLabelValues(r)
	}
	for _, a := range []string{"committed", "rolled_back"} {
		m.TwoPhaseRecovered.WithLabelValues(a)
	}
	for _, o := range []string{"committed", "rolled_back", "unknown"} {
		for _, n := range []string{"2", "3+"} {
			m.CrossShardTx.WithLabelValues(o, n)
		}
	}
	m.ToUpstream = m.BytesRelayed.WithLabelValues("client_to_upstream")
	m.ToClient = m.BytesRelayed.WithLabelValues("upstream_to_client")
	reg.MustRegister(m.ClientsAccepted, m.ClientsRejected, m.ClientsActive, m.ClientsDormant, m.PoolWait,
		m.UpstreamDials, m.BytesRelayed, m.Errors, m.CancelRequests, m.CancelsInFlight, m.SchemaChanges, m.StmtCache, m.PinnedSessions,
		m.PinRefusals, m.SettingsSyncs, m.Transactions, m.QueryDuration, m.RouteDecisions, m.RouteErrors, m.Failovers,
		m.HostUp, m.HostRole, m.ReplicaLagSeconds, m.ReplicaLagBytes, m.HostBanned, m.HealthCheckTimeouts, m.ShardMapReloads, m.ShardMapValid,
		m.FanOuts, m.FanOutShards, m.TwoPhaseCommits, m.TwoPhaseRecovered, m.CrossShardTx, m.MergedReads, m.Refused,
		m.ReadsAhead, m.QuietWaitsRescued)
	return m
}
