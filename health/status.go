package health

import "time"

// ShardStatus is one shard in the admin port's /status.
type ShardStatus struct {
	Name      string `json:"name"`
	Primary   string `json:"primary"`
	PrimaryOK bool   `json:"primary_ok"`
	// Synchronous is the shard map's flag: writes move only to a
	// synchronous standby of a failed primary.
	Synchronous bool `json:"synchronous,omitempty"`
	// PrimaryDownSince and Problem say since when and why the shard has
	// no primary; WaitingForPrimary counts the statements and new
	// transactions waiting for one now (up to FAILOVER_WAIT).
	PrimaryDownSince  *time.Time   `json:"primary_down_since,omitempty"`
	Problem           string       `json:"problem,omitempty"`
	WaitingForPrimary int          `json:"waiting_for_primary"`
	Hosts             []HostStatus `json:"hosts"`
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
	// SyncState is what the primary last reported for this standby
	// (sync, async, potential, quorum), on synchronous shards.
	SyncState string `json:"sync_state,omitempty"`
}

// Status reports every shard's hosts as the last checks saw them, in map
// order (a shard without hosts before its first check). Safe for
// concurrent use; it never blocks on I/O.
func (h *Checker) Status() []ShardStatus {
	v := h.view.Load()
	var out []ShardStatus
	now := time.Now()
	h.mu.Lock()
	waiting := make(map[string]int, len(h.waiting))
	for k, n := range h.waiting {
		waiting[k] = n
	}
	h.mu.Unlock()
	for _, sh := range h.router.Map().Shards {
		st := ShardStatus{Name: sh.Name, Primary: sh.Primary.Addr, Synchronous: sh.Synchronous, WaitingForPrimary: waiting[sh.Name]}
		if v != nil && v.Shards[sh.Name] != nil {
			sv := v.Shards[sh.Name]
			st.Primary, st.PrimaryOK, st.Problem = sv.Primary.Addr, sv.PrimaryOK, sv.Problem
			if !sv.DownSince.IsZero() {
				d := sv.DownSince
				st.PrimaryDownSince = &d
			}
			for _, r := range sv.Hosts {
				hs := HostStatus{Addr: r.Host.Addr, MapRole: r.Configured.String(), Up: r.Up,
					LagSeconds: r.LagSeconds, LagBytes: r.LagBytes, LastError: r.LastError, CheckedAt: r.CheckedAt, SyncState: r.SyncState}
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
