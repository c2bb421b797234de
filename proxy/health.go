package proxy

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

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

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

// health checks every host of the shard map periodically over its own
// connection, outside the pools, and publishes healthView snapshots that
// routing reads without locks. Run owns the check connections.
type health struct {
	srv  *Server
	log  *zap.Logger
	view atomic.Pointer[healthView]

	mu     sync.Mutex
	conns  map[string]*upstream      // check connection per host address
	closed bool                      // Run ended: connections are closed, not kept
	banned map[string]time.Time      // replica address → end of its ban
	prev   map[string]*hostHealth    // last result per address
	chosen map[string]router.Host    // shard → current primary
	rr     map[string]*atomic.Uint64 // shard → round-robin cursor
	lsns   map[string][]lsnSample    // shard → primary samples
	rounds chan struct{}             // closed and replaced after each round
}

func newHealth(s *Server) *health {
	return &health{srv: s, log: s.log.Named("health"), conns: map[string]*upstream{},
		banned: map[string]time.Time{}, prev: map[string]*hostHealth{}, chosen: map[string]router.Host{},
		rr: map[string]*atomic.Uint64{}, lsns: map[string][]lsnSample{}, rounds: make(chan struct{})}
}

// Run checks every host each HealthInterval until ctx ends, then closes
// the check connections.
func (h *health) Run(ctx context.Context) {
	defer func() {
		h.mu.Lock()
		for _, u := range h.conns {
			_ = u.Close()
		}
		h.conns = map[string]*upstream{}
		h.closed = true
		h.mu.Unlock()
	}()
	t := time.NewTicker(h.srv.cfg.Routing.HealthInterval)
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
func (h *health) waitRound() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rounds
}

// round checks every host of the current map concurrently and publishes
// the result.
func (h *health) round(ctx context.Context) {
	m := h.srv.router.Map()
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
func (h *health) check(ctx context.Context, shard string, host router.Host, role router.Role) *hostHealth {
	res := &hostHealth{Host: host, Shard: shard, Configured: role, Checked: true, CheckedAt: time.Now()}
	var row [][]byte
	err := h.onHost(ctx, router.Target{Shard: shard, Role: role, Host: host}, func(u *upstream) error {
		return u.exec(healthQuery, func(v [][]byte) {
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

// onHost runs fn on the sidecar's own connection to t's host (dialled
// when missing, application_name brownie-sidecar-health, no client's
// settings on it), bounded by HealthTimeout. The connection is kept for
// the next call unless it broke (an error other than the server's
// ErrorResponse) or was left in a transaction. Safe for concurrent use: a
// caller finding the connection taken dials another.
func (h *health) onHost(ctx context.Context, t router.Target, fn func(*upstream) error) error {
	timeout := h.srv.cfg.Routing.HealthTimeout
	h.mu.Lock()
	u := h.conns[t.Host.Addr]
	delete(h.conns, t.Host.Addr)
	h.mu.Unlock()
	start := time.Now()
	if u == nil {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		var err error
		u, err = h.srv.dialer.dialAs(cctx, t, healthAppName)
		cancel()
		if err != nil {
			return err
		}
	}
	_ = u.conn.SetDeadline(start.Add(timeout))
	err := fn(u)
	_ = u.conn.SetDeadline(time.Time{})
	var pe *pgerr.Error
	if (err != nil && !errors.As(err, &pe)) || u.txStatus != 'I' {
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
func (h *health) publish(m *router.Map, results []*hostHealth) {
	cfg := h.srv.cfg.Routing
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
		if primary != nil {
			if primary.Host.Addr != cur.Addr {
				h.log.Warn("shard primary changed", zap.String("shard", sh.Name),
					zap.String("from", cur.Addr), zap.String("to", primary.Host.Addr))
				h.srv.metrics.Failovers.WithLabelValues(sh.Name).Inc()
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
			h.srv.metrics.HostUp.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(r.Up))
			if r.Up {
				h.srv.metrics.HostRole.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(!r.InRecovery))
			}
			if r.InRecovery {
				h.srv.metrics.ReplicaLagSeconds.WithLabelValues(sh.Name, r.Host.Addr).Set(r.LagSeconds)
				h.srv.metrics.ReplicaLagBytes.WithLabelValues(sh.Name, r.Host.Addr).Set(float64(r.LagBytes))
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

// ban leaves a replica out of reads for REPLICA_BAN_TIME after a session
// failed to use it.
func (h *health) ban(addr string, err error) {
	h.mu.Lock()
	h.banned[addr] = time.Now().Add(h.srv.cfg.Routing.BanTime)
	h.mu.Unlock()
	h.log.Warn("replica banned", zap.String("addr", addr), zap.Duration("for", h.srv.cfg.Routing.BanTime), zap.Error(err))
}

// primary returns the host taking writes for shard.
func (h *health) primary(shard string, configured router.Host) router.Host {
	if v := h.view.Load(); v != nil {
		if sv := v.Shards[shard]; sv != nil {
			return sv.Primary
		}
	}
	return configured
}

// primaryOK reports whether shard's primary answered its last check; true
// before the first check.
func (h *health) primaryOK(shard string) bool {
	v := h.view.Load()
	if v == nil {
		return true
	}
	sv := v.Shards[shard]
	return sv == nil || sv.PrimaryOK
}

// replica chooses a standby of shard for a read: healthy, not banned,
// within MAX_REPLICA_LAG and MAX_REPLICA_LAG_BYTES and, when the session
// wrote on the shard at wroteAt, replayed past that write. ok is false when
// none qualifies (the read goes to the primary).
func (h *health) replica(shard string, wroteAt time.Time, busy func(router.Host) int) (router.Host, bool) {
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
	cfg := h.srv.cfg.Routing
	now := time.Now()
	h.mu.Lock()
	var ok []router.Host
	for _, r := range sv.Hosts {
		if !r.Up || !r.InRecovery || h.banned[r.Host.Addr].After(now) || r.LSN < need ||
			r.LagBytes > uint64(cfg.MaxReplicaLagBytes) || r.LagSeconds > cfg.MaxReplicaLag.Seconds() {
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

// ready reports whether every shard's primary answered its last check.
func (h *health) ready() error {
	v := h.view.Load()
	if v == nil {
		return fmt.Errorf("health checks have not completed yet")
	}
	var bad []string
	for _, sh := range h.srv.router.Map().Shards {
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

// ShardsReady returns nil when every shard's primary answered its last
// health check (and, before the first round, the reason it is not known).
func (s *Server) ShardsReady() error { return s.health.ready() }

// ShardStatus is one shard in /status.
type ShardStatus struct {
	Name      string       `json:"name"`
	Primary   string       `json:"primary"`
	PrimaryOK bool         `json:"primary_ok"`
	Hosts     []HostStatus `json:"hosts"`
}

// HostStatus is one host of a shard in /status.
type HostStatus struct {
	Addr        string     `json:"addr"`
	MapRole     string     `json:"map_role"`
	Role        string     `json:"role,omitempty"` // as the host reports it: primary or replica
	Up          bool       `json:"up"`
	LagSeconds  float64    `json:"lag_seconds"`
	LagBytes    uint64     `json:"lag_bytes"`
	BannedUntil *time.Time `json:"banned_until,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	CheckedAt   time.Time  `json:"checked_at"`
}

// ShardStatus reports every shard's hosts as the last health checks saw
// them, in map order. Safe for concurrent use.
func (s *Server) ShardStatus() []ShardStatus {
	v := s.health.view.Load()
	var out []ShardStatus
	now := time.Now()
	for _, sh := range s.router.Map().Shards {
		st := ShardStatus{Name: sh.Name, Primary: sh.Primary.Addr}
		if v != nil && v.Shards[sh.Name] != nil {
			sv := v.Shards[sh.Name]
			st.Primary, st.PrimaryOK = sv.Primary.Addr, sv.PrimaryOK
			for _, r := range sv.Hosts {
				hs := HostStatus{Addr: r.Host.Addr, MapRole: r.Configured.String(), Up: r.Up,
					LagSeconds: r.LagSeconds, LagBytes: r.LagBytes, LastError: r.LastError, CheckedAt: r.CheckedAt}
				if r.Up {
					hs.Role = "primary"
					if r.InRecovery {
						hs.Role = "replica"
					}
				}
				if r.BannedUntil.After(now) {
					b := r.BannedUntil
					hs.BannedUntil = &b
				}
				st.Hosts = append(st.Hosts, hs)
			}
		}
		out = append(out, st)
	}
	return out
}
