package health

import "time"

// ShardStatus is one shard in the admin port's /status.
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

// Status reports every shard's hosts as the last checks saw them, in map
// order (a shard without hosts before its first check). Safe for
// concurrent use; it never blocks on I/O.
func (h *Checker) Status() []ShardStatus {
	v := h.view.Load()
	var out []ShardStatus
	now := time.Now()
	for _, sh := range h.router.Map().Shards {
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
