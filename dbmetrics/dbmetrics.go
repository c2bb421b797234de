package dbmetrics

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// AdvisoryLockKey is the key of the session advisory lock that elects the
// collecting sidecar: the ASCII bytes of "brownmet" read as a big-endian
// int64. It differs from the backups' key, so the two elections are
// independent.
const AdvisoryLockKey int64 = 0x62726f776e6d6574 // "brownmet"

// Conn is the part of a pgx connection a collection uses; *pgx.Conn
// implements it.
type Conn interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Close(ctx context.Context) error
}

// Elector elects the one collecting sidecar. Implementations must be safe
// for concurrent use.
type Elector interface {
	// TryAcquire takes the lock without waiting. ok is false, with a nil
	// error, when another sidecar holds it.
	TryAcquire(ctx context.Context) (lease Lease, ok bool, err error)
}

// Lease is a held election lock.
type Lease interface {
	// Check returns an error when the lock may have been lost.
	Check(ctx context.Context) error
	// Release gives the lock up; it is idempotent.
	Release()
}

// Deps are the Collector's collaborators.
type Deps struct {
	// Log receives the election and failure events; nil discards.
	Log *zap.Logger
	// Registerer receives the metrics; it is required.
	Registerer prometheus.Registerer
	// Shards returns the names of the shards, in map order, at the start
	// of each round.
	Shards func() []string
	// Connect opens a connection to the Brownie database on a shard's
	// current primary, authenticated as the sidecar. The Collector closes
	// it at the end of the round.
	Connect func(ctx context.Context, shard string) (Conn, error)
	// Elector elects the collecting sidecar.
	Elector Elector
	// Now is the clock of the collection timestamps; nil is time.Now.
	Now func() time.Time
}

// Collector runs the election and the collections and exports their
// results as a prometheus.Collector registered on Deps.Registerer. Run
// must be called at most once; the exported values are safe to scrape
// concurrently with it.
type Collector struct {
	cfg      config.DBMetrics
	log      *zap.Logger
	shards   func() []string
	connect  func(ctx context.Context, shard string) (Conn, error)
	elector  Elector
	now      func() time.Time
	failures *prometheus.CounterVec
	leader   prometheus.Gauge

	mu    sync.Mutex
	snaps map[string]*snapshot // shard → last successful collection

	lease Lease // only Run's goroutine touches it
}

// snapshot is one shard's successful collection. It is immutable once
// stored.
type snapshot struct {
	at       time.Time
	dbSize   float64
	tables   map[string]float64
	conns    map[string]float64
	entities [len(entityNames)]float64
}

// entityNames are the entity gauges, in the order of entitiesQuery's
// columns; each is a count of rows on one shard.
var entityNames = [...]struct{ name, help string }{
	{"brownie_organizations_total", "Rows of organizations on the shard (a replicated table: every shard holds every row)."},
	{"brownie_teams_total", "Rows of teams on the shard (sharded: sum over shards)."},
	{"brownie_users_total", "Rows of users on the shard (a replicated table: every shard holds every row)."},
	{"brownie_incidents_total", "Rows of incidents on the shard (sharded: sum over shards)."},
	{"brownie_active_incidents_total", "Incidents with status OPEN on the shard (sharded: sum over shards)."},
	{"brownie_agent_configs_total", "Rows of agent_configs on the shard (sharded: sum over shards)."},
}

// connectionStates are always exported (at 0 when no connection is in the
// state), so that a state that empties reads 0 instead of disappearing.
var connectionStates = []string{"active", "idle", "idle_in_transaction", "idle_in_transaction_aborted",
	"fastpath_function_call", "disabled"}

// Queries of one collection. The connection count leaves out the
// collector's own connection.
const (
	sizeQuery   = `SELECT pg_database_size(current_database())`
	tablesQuery = `SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition`
	connectionsQuery = `SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1`
	entitiesQuery = `SELECT (SELECT count(*) FROM public.organizations),
       (SELECT count(*) FROM public.teams),
       (SELECT count(*) FROM public.users),
       (SELECT count(*) FROM public.incidents),
       (SELECT count(*) FROM public.incidents WHERE status = 'OPEN'),
       (SELECT count(*) FROM public.agent_configs)`
)

var (
	descDBSize = prometheus.NewDesc("brownie_db_size_bytes",
		"Size of the Brownie database on the shard's primary (pg_database_size).", []string{"shard"}, nil)
	descTableSize = prometheus.NewDesc("brownie_db_table_size_bytes",
		"Size of each table of the public schema on the shard's primary, with indexes and TOAST (pg_total_relation_size).",
		[]string{"shard", "table"}, nil)
	descConns = prometheus.NewDesc("brownie_db_connections_total",
		"Connections to the Brownie database on the shard's primary by state (pg_stat_activity; states with spaces "+
			"use underscores, unknown when the role may not see it), without the collector's own.",
		[]string{"shard", "state"}, nil)
	descLastSuccess = prometheus.NewDesc("brownie_db_metrics_last_success_timestamp_seconds",
		"Unix time of the shard's last successful collection by this sidecar.", []string{"shard"}, nil)
	descEntities = func() (d [len(entityNames)]*prometheus.Desc) {
		for i, e := range entityNames {
			d[i] = prometheus.NewDesc(e.name, e.help, []string{"shard"}, nil)
		}
		return d
	}()
)

// New returns a Collector and registers its metrics on deps.Registerer.
// cfg must be enabled and valid. It does no I/O.
func New(cfg config.DBMetrics, deps Deps) (*Collector, error) {
	if !cfg.Enabled() || cfg.QueryTimeout <= 0 {
		return nil, errors.New("dbmetrics: DB_METRICS_INTERVAL and DB_METRICS_QUERY_TIMEOUT must be positive")
	}
	if deps.Registerer == nil || deps.Shards == nil || deps.Connect == nil || deps.Elector == nil {
		return nil, errors.New("dbmetrics: Deps.Registerer, Shards, Connect and Elector are required")
	}
	c := &Collector{
		cfg: cfg, log: deps.Log, shards: deps.Shards, connect: deps.Connect, elector: deps.Elector, now: deps.Now,
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_db_metrics_failures_total",
			Help: "Collections of a shard's database metrics that failed (connection, query or timeout); the shard's gauges are removed until one succeeds.",
		}, []string{"shard"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brownie_db_metrics_leader",
			Help: "1 while this sidecar is the one collecting the database metrics of the cluster.",
		}),
		snaps: map[string]*snapshot{},
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.now == nil {
		c.now = time.Now
	}
	for _, col := range []prometheus.Collector{c.failures, c.leader, (*gauges)(c)} {
		if err := deps.Registerer.Register(col); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Run elects and collects every Interval until ctx ends, then releases
// the lock and returns nil. The first round runs at once.
func (c *Collector) Run(ctx context.Context) error {
	defer c.resign()
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		c.Round(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Round runs one round: it checks or tries the lock and, when this
// sidecar holds it, collects every shard. Run calls it; tests may call it
// directly instead of Run, never both at once.
func (c *Collector) Round(ctx context.Context) {
	if c.lease != nil {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
		err := c.lease.Check(cctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("db metrics leadership lost", zap.Error(err))
			c.resign()
		}
	}
	if c.lease == nil {
		if len(c.shards()) == 0 {
			return // no primary known yet (before the first health checks)
		}
		cctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
		lease, ok, err := c.elector.TryAcquire(cctx)
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				c.log.Warn("db metrics election failed", zap.Error(err))
			}
			return
		case !ok:
			return
		}
		c.lease = lease
		c.leader.Set(1)
		c.log.Info("db metrics collector elected")
	}
	c.collect(ctx)
}

// resign gives the lock up and stops exporting the gauges.
func (c *Collector) resign() {
	if c.lease != nil {
		c.lease.Release()
		c.lease = nil
	}
	c.leader.Set(0)
	c.mu.Lock()
	c.snaps = map[string]*snapshot{}
	c.mu.Unlock()
}

// collect collects every shard at once and swaps the results in: a shard
// that failed loses its gauges, and shards no longer in the map are
// dropped.
func (c *Collector) collect(ctx context.Context) {
	shards := c.shards()
	results := make([]*snapshot, len(shards))
	var wg sync.WaitGroup
	for i, sh := range shards {
		c.failures.WithLabelValues(sh) // exported at 0, for increase()
		wg.Go(func() {
			snap, err := c.collectShard(ctx, sh)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				c.failures.WithLabelValues(sh).Inc()
				c.log.Warn("db metrics collection failed", zap.String("shard", sh), zap.Error(err))
				return
			}
			results[i] = snap
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	next := make(map[string]*snapshot, len(shards))
	for i, sh := range shards {
		if results[i] != nil {
			next[sh] = results[i]
		}
	}
	c.mu.Lock()
	c.snaps = next
	c.mu.Unlock()
}

// collectShard runs the queries on one shard's primary over a new
// connection, each bounded by QueryTimeout.
func (c *Collector) collectShard(ctx context.Context, shard string) (*snapshot, error) {
	bounded := func(f func(ctx context.Context) error) error {
		qctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
		defer cancel()
		return f(qctx)
	}
	var conn Conn
	if err := bounded(func(ctx context.Context) (err error) {
		conn, err = c.connect(ctx, shard)
		return err
	}); err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), c.cfg.QueryTimeout)
		defer cancel()
		_ = conn.Close(cctx)
	}()

	s := &snapshot{tables: map[string]float64{}, conns: map[string]float64{}}
	for _, st := range connectionStates {
		s.conns[st] = 0
	}
	err := bounded(func(ctx context.Context) error {
		var size int64
		if err := conn.QueryRow(ctx, sizeQuery).Scan(&size); err != nil {
			return err
		}
		s.dbSize = float64(size)
		return nil
	})
	if err == nil {
		err = bounded(func(ctx context.Context) error {
			return scanPairs(ctx, conn, tablesQuery, func(name string, v int64) { s.tables[name] = float64(v) })
		})
	}
	if err == nil {
		err = bounded(func(ctx context.Context) error {
			return scanPairs(ctx, conn, connectionsQuery, func(state string, v int64) { s.conns[stateLabel(state)] += float64(v) })
		})
	}
	if err == nil {
		err = bounded(func(ctx context.Context) error {
			var n [len(entityNames)]int64
			dest := make([]any, len(n))
			for i := range n {
				dest[i] = &n[i]
			}
			if err := conn.QueryRow(ctx, entitiesQuery).Scan(dest...); err != nil {
				return err
			}
			for i, v := range n {
				s.entities[i] = float64(v)
			}
			return nil
		})
	}
	if err != nil {
		return nil, err
	}
	s.at = c.now()
	return s, nil
}

// scanPairs runs a query returning (text, bigint) rows.
func scanPairs(ctx context.Context, conn Conn, sql string, add func(string, int64)) error {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		add(k, v)
	}
	return rows.Err()
}

// stateLabel turns a pg_stat_activity state into a label value:
// "idle in transaction (aborted)" → "idle_in_transaction_aborted".
func stateLabel(state string) string {
	r := strings.NewReplacer(" ", "_", "(", "", ")", "")
	return r.Replace(state)
}

// gauges is the prometheus.Collector of the snapshots.
type gauges Collector

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDBSize, descTableSize, descConns, descLastSuccess} {
		ch <- d
	}
	for _, d := range descEntities {
		ch <- d
	}
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	snaps := g.snaps
	g.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, shard := range slices.Sorted(maps.Keys(snaps)) {
		s := snaps[shard]
		gauge(descDBSize, s.dbSize, shard)
		for t, v := range s.tables {
			gauge(descTableSize, v, shard, t)
		}
		for st, v := range s.conns {
			gauge(descConns, v, shard, st)
		}
		for i, v := range s.entities {
			gauge(descEntities[i], v, shard)
		}
		gauge(descLastSuccess, float64(s.at.UnixNano())/1e9, shard)
	}
}
