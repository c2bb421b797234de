package health

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

// AppName is the application_name Deps.Dial should give the checker's
// connections, so operators (and tests) can tell them from pooled ones in
// pg_stat_activity.
const AppName = "brownie-sidecar-health"

// healthQuery reads a host's role and WAL position in one round trip: the
// WAL insert position on a primary (which covers commits still in WAL
// buffers under synchronous_commit=off), the replayed one on a standby, plus
// what a standby has received and how old its last replayed transaction is.
const healthQuery = `SELECT pg_is_in_recovery(),
 CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END,
 pg_last_wal_receive_lsn(),
 EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())`

// lsnSamples is how many recent primary WAL positions a shard remembers
// for read-your-writes.
const lsnSamples = 64

// Config is what the checker needs from the sidecar configuration.
type Config struct {
	// Interval is the period of the checks (HEALTH_CHECK_INTERVAL);
	// Timeout bounds one check, connect and query (HEALTH_CHECK_TIMEOUT),
	// and every OnHost call.
	Interval time.Duration
	Timeout  time.Duration
	// BanTime is how long a replica that failed is left out of reads
	// (REPLICA_BAN_TIME).
	BanTime time.Duration
	// MaxLag and MaxLagBytes are the replay delay and WAL distance above
	// which a replica gets no reads (MAX_REPLICA_LAG,
	// MAX_REPLICA_LAG_BYTES).
	MaxLag      time.Duration
	MaxLagBytes int64
	// ReplicaSelection is round_robin or least_busy (REPLICA_SELECTION).
	ReplicaSelection string
}

// Conn is one authenticated upstream connection, idle when Dial returns
// it. The checker uses it from one goroutine at a time and owns it until
// it closes it; package proxy implements it.
type Conn interface {
	// Exec runs one simple-protocol query to completion, passing each
	// DataRow's text values to onRow (which may be nil; the values are
	// only valid during the call). It returns the first error the server
	// reported as a *pgerr.Error, or the I/O error that broke the
	// connection.
	Exec(sql string, onRow func([][]byte)) error
	// InTransaction reports whether the last ReadyForQuery left the
	// connection anywhere but idle: in a transaction block, or a failed
	// one.
	InTransaction() bool
	// SetDeadline bounds every read and write; the zero time removes the
	// bound.
	SetDeadline(t time.Time) error
	// Close ends the connection. Safe to call more than once.
	Close() error
}

// Deps are the checker's collaborators.
type Deps struct {
	// Router supplies the current shard map; each round checks the hosts
	// of the map current when it starts.
	Router *router.Router
	// Metrics receives the host metrics (up, role, lag, failovers).
	Metrics *metrics.Metrics
	Log     *zap.Logger
	// Dial opens a connection to t's host, with application_name AppName
	// and no client's settings, bounded by ctx. Called concurrently.
	Dial func(ctx context.Context, t router.Target) (Conn, error)
}

// hostHealth is what the last check of one host found. Immutable once
// published in a healthView.
type hostHealth struct {
	Host       router.Host
	Shard      string
	Configured router.Role // its role in the shard map
	Checked    bool        // at least one check has finished
	Up         bool
	InRecovery bool
	LSN        uint64 // current WAL position (primary) or replayed position (standby)
	ReceiveLSN uint64
	// LagBytes and LagSeconds are a standby's distance behind its shard's
	// primary; 0 on a primary.
	LagBytes    uint64
	LagSeconds  float64
	BannedUntil time.Time
	LastError   string
	CheckedAt   time.Time
}

// lsnSample is a primary's WAL position read by a check sent at At: any
// transaction that committed before At is at or below LSN.
type lsnSample struct {
	At  time.Time
	LSN uint64
}

// shardHealth is one shard's state in a healthView.
type shardHealth struct {
	// Primary is the host taking writes: the map's primary, or the standby
	// promoted in its place.
	Primary router.Host
	// PrimaryOK is true when Primary answered its last check as a primary.
	PrimaryOK bool
	Hosts     []*hostHealth
	// Samples are the primary's recent WAL positions, oldest first.
	Samples []lsnSample
	rr      *atomic.Uint64 // round-robin cursor, shared across views
}

// healthView is an immutable snapshot of every host's health, swapped whole
// after each round of checks.
type healthView struct {
	Shards map[string]*shardHealth
}

// Checker checks every host of the shard map periodically over its own
// connection, outside the pools, and publishes snapshots that routing
// reads without locks. Run owns the check connections. All methods are
// safe for concurrent use; before the first round ends, Primary returns
// the map's primary, PrimaryOK true, Replica nothing and Ready an error.
type Checker struct {
	cfg     Config
	router  *router.Router
	metrics *metrics.Metrics
	dial    func(context.Context, router.Target) (Conn, error)
	log     *zap.Logger
	view    atomic.Pointer[healthView]

	mu     sync.Mutex
	conns  map[string]Conn           // check connection per host address
	closed bool                      // Run ended: connections are closed, not kept
	banned map[string]time.Time      // replica address → end of its ban
	prev   map[string]*hostHealth    // last result per address
	chosen map[string]router.Host    // shard → current primary
	rr     map[string]*atomic.Uint64 // shard → round-robin cursor
	lsns   map[string][]lsnSample    // shard → primary samples
	rounds chan struct{}             // closed and replaced after each round
}

// New returns a checker over deps.Router's shard map. It opens no
// connections and starts no goroutines: call Run once.
func New(cfg Config, deps Deps) *Checker {
	return &Checker{cfg: cfg, router: deps.Router, metrics: deps.Metrics, dial: deps.Dial, log: deps.Log,
		conns: map[string]Conn{}, banned: map[string]time.Time{}, prev: map[string]*hostHealth{},
		chosen: map[string]router.Host{}, rr: map[string]*atomic.Uint64{}, lsns: map[string][]lsnSample{},
		rounds: make(chan struct{})}
}

// Run checks every host each Interval until ctx ends, then closes the
// check connections; connections OnHost returns afterwards are closed
// rather than kept. Call it once.
func (h *Checker) Run(ctx context.Context) {
	defer func() {
		h.mu.Lock()
		for _, u := range h.conns {
			_ = u.Close()
		}
		h.conns = map[string]Conn{}
		h.closed = true
		h.mu.Unlock()
	}()
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	for {
		h.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitRound returns a channel closed when the next round of checks ends.
func (h *Checker) waitRound() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rounds
}

// round checks every host of the current map concurrently and publishes
// the result.
func (h *Checker) round(ctx context.Context) {
	m := h.router.Map()
	type job struct {
		shard string
		host  router.Host
		role  router.Role
	}
	var jobs []job
	for _, sh := range m.Shards {
		jobs = append(jobs, job{sh.Name, sh.Primary, router.Primary})
		for _, r := range sh.Replicas {
			jobs = append(jobs, job{sh.Name, r, router.Replica})
		}
	}
	results := make([]*hostHealth, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = h.check(ctx, j.shard, j.host, j.role)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	h.publish(m, results)
}

// check runs the health query on one host.
func (h *Checker) check(ctx context.Context, shard string, host router.Host, role router.Role) *hostHealth {
	res := &hostHealth{Host: host, Shard: shard, Configured: role, Checked: true, CheckedAt: time.Now()}
	var row [][]byte
	err := h.OnHost(ctx, router.Target{Shard: shard, Role: role, Host: host}, func(c Conn) error {
		return c.Exec(healthQuery, func(v [][]byte) {
			row = make([][]byte, len(v))
			for i := range v {
				if v[i] != nil {
					row[i] = append([]byte{}, v[i]...)
				}
			}
		})
	})
	if err == nil && len(row) != 4 {
		err = fmt.Errorf("health query returned no row")
	}
	if err != nil {
		res.LastError = err.Error()
		return res
	}
	res.Up = true
	res.InRecovery = string(row[0]) == "t"
	res.LSN, _ = parseLSN(string(row[1]))
	res.ReceiveLSN, _ = parseLSN(string(row[2]))
	if res.InRecovery && res.ReceiveLSN > res.LSN && row[3] != nil {
		// Only a standby with received WAL still to replay is behind; an
		// idle primary makes the last replay timestamp old without lag.
		res.LagSeconds, _ = strconv.ParseFloat(string(row[3]), 64)
	}
	return res
}

// OnHost runs fn on the checker's own connection to t's host (dialled
// when missing through Deps.Dial, so with no client's settings on it),
// bounded by Timeout. The connection is kept for the next call unless it
// broke (an error other than the server's *pgerr.Error) or was left in a
// transaction; fn must not keep it. It returns fn's error, or the dial's.
// Safe for concurrent use: a caller finding the connection taken dials
// another.
func (h *Checker) OnHost(ctx context.Context, t router.Target, fn func(Conn) error) error {
	timeout := h.cfg.Timeout
	h.mu.Lock()
	u := h.conns[t.Host.Addr]
	delete(h.conns, t.Host.Addr)
	h.mu.Unlock()
	start := time.Now()
	if u == nil {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		var err error
		u, err = h.dial(cctx, t)
		cancel()
		if err != nil {
			return err
		}
	}
	_ = u.SetDeadline(start.Add(timeout))
	err := fn(u)
	_ = u.SetDeadline(time.Time{})
	var pe *pgerr.Error
	if (err != nil && !errors.As(err, &pe)) || u.InTransaction() {
		_ = u.Close()
		return err
	}
	h.mu.Lock()
	if h.conns[t.Host.Addr] == nil && !h.closed {
		h.conns[t.Host.Addr], u = u, nil
	}
	h.mu.Unlock()
	if u != nil {
		_ = u.Close() // another caller put its connection back first
	}
	return err
}

// publish computes the shards' primaries, lags and bans from a round's
// results and swaps the view in.
func (h *Checker) publish(m *router.Map, results []*hostHealth) {
	cfg := h.cfg
	now := time.Now()
	byShard := map[string][]*hostHealth{}
	for _, r := range results {
		byShard[r.Shard] = append(byShard[r.Shard], r)
	}
	h.mu.Lock()
	view := &healthView{Shards: map[string]*shardHealth{}}
	for _, sh := range m.Shards {
		hosts := byShard[sh.Name]
		// Keep the current primary while it answers as one; else take the
		// map's primary, else a promoted standby.
		cur, ok := h.chosen[sh.Name]
		if !ok {
			cur = sh.Primary
		}
		var primary *hostHealth
		for _, r := range hosts {
			if r.Host.Addr == cur.Addr && r.Up && !r.InRecovery {
				primary = r
			}
		}
		if primary == nil {
			for _, r := range hosts { // the map's primary first
				if r.Up && !r.InRecovery {
					primary = r
					break
				}
			}
		}
		sv := &shardHealth{Primary: cur, Hosts: hosts}
		failovers := h.metrics.Failovers.WithLabelValues(sh.Name) // exported at 0, for alerts on increase()
		if primary != nil {
			if primary.Host.Addr != cur.Addr {
				h.log.Warn("shard primary changed", zap.String("shard", sh.Name),
					zap.String("from", cur.Addr), zap.String("to", primary.Host.Addr))
				failovers.Inc()
			}
			sv.Primary, sv.PrimaryOK = primary.Host, true
			h.chosen[sh.Name] = primary.Host
			samples := append(h.lsns[sh.Name], lsnSample{At: primary.CheckedAt, LSN: primary.LSN})
			if len(samples) > lsnSamples {
				samples = samples[len(samples)-lsnSamples:]
			}
			h.lsns[sh.Name] = samples
		}
		sv.Samples = h.lsns[sh.Name]
		if h.rr[sh.Name] == nil {
			h.rr[sh.Name] = &atomic.Uint64{}
		}
		sv.rr = h.rr[sh.Name]
		for _, r := range hosts {
			prev := h.prev[r.Host.Addr]
			switch {
			case !r.Up:
				if prev == nil || prev.Up {
					h.log.Warn("host unhealthy", zap.String("shard", sh.Name), zap.String("addr", r.Host.Addr), zap.String("error", r.LastError))
				}
				h.banned[r.Host.Addr] = now.Add(cfg.BanTime)
			case prev != nil && !prev.Up:
				h.log.Info("host healthy again", zap.String("shard", sh.Name), zap.String("addr", r.Host.Addr))
			}
			if r.Up && r.InRecovery && primary != nil && primary.LSN > r.LSN {
				r.LagBytes = primary.LSN - r.LSN
			}
			r.BannedUntil = h.banned[r.Host.Addr]
			h.prev[r.Host.Addr] = r
			h.metrics.HostUp.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(r.Up))
			h.metrics.HostBanned.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(r.BannedUntil.After(now)))
			if r.Up {
				h.metrics.HostRole.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(!r.InRecovery))
			}
			if r.InRecovery {
				h.metrics.ReplicaLagSeconds.WithLabelValues(sh.Name, r.Host.Addr).Set(r.LagSeconds)
				h.metrics.ReplicaLagBytes.WithLabelValues(sh.Name, r.Host.Addr).Set(float64(r.LagBytes))
			}
		}
		view.Shards[sh.Name] = sv
	}
	h.view.Store(view)
	close(h.rounds)
	h.rounds = make(chan struct{})
	h.mu.Unlock()
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Ban leaves the replica at addr out of reads for BanTime after a session
// failed to use it (err, logged). A later ban extends an earlier one; a
// failed check bans too.
func (h *Checker) Ban(addr string, err error) {
	h.mu.Lock()
	h.banned[addr] = time.Now().Add(h.cfg.BanTime)
	h.mu.Unlock()
	h.log.Warn("replica banned", zap.String("addr", addr), zap.Duration("for", h.cfg.BanTime), zap.Error(err))
}

// Primary returns the host taking writes for shard: the one the last
// round chose, or configured (the map's primary) before the first round
// or for a shard the last round did not know.
func (h *Checker) Primary(shard string, configured router.Host) router.Host {
	if v := h.view.Load(); v != nil {
		if sv := v.Shards[shard]; sv != nil {
			return sv.Primary
		}
	}
	return configured
}

// PrimaryOK reports whether shard's primary answered its last check; true
// before the first check and for a shard the last round did not know.
func (h *Checker) PrimaryOK(shard string) bool {
	v := h.view.Load()
	if v == nil {
		return true
	}
	sv := v.Shards[shard]
	return sv == nil || sv.PrimaryOK
}

// Replica chooses a standby of shard for a read: healthy, not banned,
// within MaxLag and MaxLagBytes and, when the session wrote on the shard
// at wroteAt (non-zero), replayed past that write. Among those it takes
// the one with the fewest busy(host) when ReplicaSelection is least_busy
// and busy is not nil, else the next in round-robin order. ok is false
// when none qualifies (the read goes to the primary).
func (h *Checker) Replica(shard string, wroteAt time.Time, busy func(router.Host) int) (router.Host, bool) {
	v := h.view.Load()
	if v == nil {
		return router.Host{}, false
	}
	sv := v.Shards[shard]
	if sv == nil || !sv.PrimaryOK {
		return router.Host{}, false
	}
	var need uint64
	if !wroteAt.IsZero() {
		// The first primary position read by a check sent after the write
		// committed is at or past the commit.
		found := false
		for _, s := range sv.Samples {
			if s.At.After(wroteAt) {
				need, found = s.LSN, true
				break
			}
		}
		if !found {
			return router.Host{}, false
		}
	}
	cfg := h.cfg
	now := time.Now()
	h.mu.Lock()
	var ok []router.Host
	for _, r := range sv.Hosts {
		if !r.Up || !r.InRecovery || h.banned[r.Host.Addr].After(now) || r.LSN < need ||
			r.LagBytes > uint64(cfg.MaxLagBytes) || r.LagSeconds > cfg.MaxLag.Seconds() {
			continue
		}
		ok = append(ok, r.Host)
	}
	h.mu.Unlock()
	if len(ok) == 0 {
		return router.Host{}, false
	}
	if busy != nil && cfg.ReplicaSelection == "least_busy" {
		best, bestN := ok[0], busy(ok[0])
		for _, c := range ok[1:] {
			if n := busy(c); n < bestN {
				best, bestN = c, n
			}
		}
		return best, true
	}
	return ok[int(sv.rr.Add(1)%uint64(len(ok)))], true
}

// Ready returns nil when every shard's primary answered its last check
// (and, before the first round, the reason it is not known).
func (h *Checker) Ready() error {
	v := h.view.Load()
	if v == nil {
		return fmt.Errorf("health checks have not completed yet")
	}
	var bad []string
	for _, sh := range h.router.Map().Shards {
		if sv := v.Shards[sh.Name]; sv == nil || !sv.PrimaryOK {
			bad = append(bad, sh.Name)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("no reachable primary for %s", strings.Join(bad, ", "))
	}
	return nil
}

// parseLSN parses a pg_lsn in its text form "X/Y".
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, err
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, err
	}
	return h<<32 | l, nil
}
