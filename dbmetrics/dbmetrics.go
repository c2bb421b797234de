package dbmetrics

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// AdvisoryLockKey is the key of the session advisory lock that elects the
// collecting sidecar: the ASCII bytes of "brownmet" read as a big-endian
// int64. It differs from the backups' key, so the two elections are
// independent.
const AdvisoryLockKey int64 = 0x62726f776e6d6574 // "brownmet"

// Conn is one authenticated connection to a shard's primary, as the
// sidecar's own health checks hold (health.Conn implements it). A
// collection uses it from one goroutine and closes it.
type Conn interface {
	// Exec runs one simple-protocol query to completion, passing each
	// row's text values to onRow (valid only during the call).
	Exec(sql string, onRow func([][]byte)) error
	// SetDeadline bounds every read and write; the zero time removes it.
	SetDeadline(t time.Time) error
	// Close ends the connection; safe to call more than once.
	Close() error
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
	cctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
	conn, err := c.connect(cctx, shard)
	cancel()
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	s := &snapshot{tables: map[string]float64{}, conns: map[string]float64{}}
	for _, st := range connectionStates {
		s.conns[st] = 0
	}
	query := func(sql string, columns int, row func(vals []float64, text string)) error {
		return bounded(ctx, conn, c.cfg.QueryTimeout, func() error {
			var bad error
			err := conn.Exec(sql, func(cols [][]byte) {
				if bad != nil {
					return
				}
				if len(cols) != columns {
					bad = fmt.Errorf("%d columns, want %d", len(cols), columns)
					return
				}
				first := 0
				text := ""
				if columns == 2 {
					text, first = string(cols[0]), 1
				}
				vals := make([]float64, 0, columns-first)
				for _, col := range cols[first:] {
					v, err := strconv.ParseFloat(string(col), 64)
					if err != nil {
						bad = fmt.Errorf("not a number: %q", col)
						return
					}
					vals = append(vals, v)
				}
				row(vals, text)
			})
			return cmpErr(err, bad)
		})
	}
	rows := 0
	err = query(sizeQuery, 1, func(v []float64, _ string) { s.dbSize, rows = v[0], rows+1 })
	if err == nil && rows != 1 {
		err = errors.New("the database size query returned no row")
	}
	if err == nil {
		err = query(tablesQuery, 2, func(v []float64, name string) { s.tables[name] = v[0] })
	}
	if err == nil {
		err = query(connectionsQuery, 2, func(v []float64, state string) { s.conns[stateLabel(state)] += v[0] })
	}
	if err == nil {
		rows = 0
		err = query(entitiesQuery, len(entityNames), func(v []float64, _ string) {
			copy(s.entities[:], v)
			rows++
		})
		if err == nil && rows != 1 {
			err = errors.New("the entity count query returned no row")
		}
	}
	if err != nil {
		return nil, err
	}
	s.at = c.now()
	return s, nil
}

// bounded runs f with conn's deadline at timeout from now (or ctx's
// deadline, if sooner); ctx ending interrupts it.
func bounded(ctx context.Context, conn Conn, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	err := f()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	_ = conn.SetDeadline(time.Time{})
	return err
}

// cmpErr is the first non-nil error.
func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
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
