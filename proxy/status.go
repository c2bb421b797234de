package proxy

import (
	"cmp"
	"slices"

	"github.com/brownie/brownie-sidecar/health"
)

// ServerStatus is a point-in-time report of a Server for the admin port's
// /status. It holds no secrets and no per-client identities.
type ServerStatus struct {
	Pools    []PoolStatus  `json:"pools"`
	Sessions SessionStatus `json:"sessions"`
}

// PoolStatus describes the upstream pool of one target.
type PoolStatus struct {
	Shard string `json:"shard"`
	Role  string `json:"role"`
	Host  string `json:"host"`
	// Size is the maximum number of connections; Open counts idle, in use
	// and being dialled.
	Size    int `json:"size"`
	Open    int `json:"open"`
	Idle    int `json:"idle"`
	InUse   int `json:"in_use"`
	Dialing int `json:"dialing"`
	// Waiting counts clients waiting for a connection now.
	Waiting  int    `json:"waiting"`
	Acquires uint64 `json:"acquires"`
	Timeouts uint64 `json:"acquire_timeouts"`
	// WaitSeconds is the total time clients have waited since start.
	WaitSeconds float64 `json:"wait_seconds"`
}

// SessionStatus counts client sessions.
type SessionStatus struct {
	// Active sessions are registered (past startup); MaxClients is
	// MAX_CLIENT_CONN.
	Active     int `json:"active"`
	MaxClients int `json:"max_clients"`
	// Attached sessions hold an upstream connection now; InTransaction
	// ones hold it inside a transaction block.
	Attached      int  `json:"attached"`
	InTransaction int  `json:"in_transaction"`
	Draining      bool `json:"draining"`
}

// Status reports the pools (sorted by shard, role and host) and the
// sessions. It is read-only, safe for concurrent use and never blocks on
// I/O: it takes the server lock to copy the pool and session lists, then
// each pool's and each session's lock one at a time.
func (s *Server) Status() ServerStatus {
	s.mu.Lock()
	pools := make(map[poolKey]*upstreamPool, len(s.pools))
	for k, p := range s.pools {
		pools[k] = p
	}
	sessions := s.sessionList()
	draining := s.draining
	s.mu.Unlock()

	out := ServerStatus{
		Pools:    make([]PoolStatus, 0, len(pools)),
		Sessions: SessionStatus{Active: len(sessions), MaxClients: s.cfg.Listen.MaxClients, Draining: draining},
	}
	for k, p := range pools {
		st := p.Stats()
		out.Pools = append(out.Pools, PoolStatus{
			Shard: k.target.Shard, Role: k.target.Role.String(), Host: k.target.Host.Addr,
			Size: st.Size, Open: st.Open, Idle: st.Idle, InUse: st.InUse, Dialing: st.Dialing, Waiting: st.Waiting,
			Acquires: st.Acquires, Timeouts: st.Timeouts, WaitSeconds: st.WaitTime.Seconds(),
		})
	}
	slices.SortFunc(out.Pools, func(a, b PoolStatus) int {
		return cmp.Or(cmp.Compare(a.Shard, b.Shard), cmp.Compare(a.Role, b.Role), cmp.Compare(a.Host, b.Host))
	})
	for _, ss := range sessions {
		ss.mu.Lock()
		if ss.up != nil {
			out.Sessions.Attached++
			if ss.txStatus != 'I' {
				out.Sessions.InTransaction++
			}
		}
		ss.mu.Unlock()
	}
	return out
}

// ShardsReady returns nil when every shard's primary answered its last
// health check (and, before the first round, the reason it is not known).
// Safe for concurrent use.
func (s *Server) ShardsReady() error { return s.health.Ready() }

// ShardStatus reports every shard's hosts as the last health checks saw
// them, in map order. Safe for concurrent use; it never blocks on I/O.
func (s *Server) ShardStatus() []health.ShardStatus { return s.health.Status() }

// PoolWaits is how many acquisitions, over every pool, have had to wait
// for a connection since the server started. It only grows; a caller
// compares two readings to learn whether clients queued in between.
// Safe for concurrent use.
func (s *Server) PoolWaits() uint64 {
	s.mu.Lock()
	pools := make([]*upstreamPool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	var n uint64
	for _, p := range pools {
		n += p.Stats().Waits
	}
	return n
}
