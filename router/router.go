package router

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// Role is the replication role of a host.
type Role int

// Roles.
const (
	Primary Role = iota
	Replica
)

// String returns the metric label for r.
func (r Role) String() string {
	if r == Replica {
		return "replica"
	}
	return "primary"
}

// Host is one Postgres server.
type Host struct {
	// Addr is host:port.
	Addr string
	// ServerName is the name verify-full checks in the server certificate;
	// empty means the host part of Addr.
	ServerName string
}

// Shard is one primary and its replicas.
type Shard struct {
	Name     string
	Primary  Host
	Replicas []Host
}

// Map is an immutable shard map. Never modify a Map after passing it to a
// Router.
type Map struct {
	Shards []Shard
}

// Validate reports every problem with m.
func (m *Map) Validate() error {
	var errs []error
	if len(m.Shards) == 0 {
		errs = append(errs, errors.New("shard map has no shards"))
	}
	seen := map[string]bool{}
	for i, s := range m.Shards {
		if s.Name == "" {
			errs = append(errs, fmt.Errorf("shard %d has no name", i))
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("shard name %q is used twice", s.Name))
		}
		seen[s.Name] = true
		for _, h := range append([]Host{s.Primary}, s.Replicas...) {
			if _, _, err := net.SplitHostPort(h.Addr); err != nil {
				errs = append(errs, fmt.Errorf("shard %q: host %q: %v", s.Name, h.Addr, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Target is where a session's upstream connection goes.
type Target struct {
	Shard string
	Role  Role
	Host  Host
}

// String returns "shard/role".
func (t Target) String() string { return t.Shard + "/" + t.Role.String() }

// SessionFacts are what the router knows about a client session when it
// starts. Statement-level facts arrive with team routing.
type SessionFacts struct {
	Database string
	User     string
}

// Router routes sessions using the current Map. Safe for concurrent use.
type Router struct {
	m atomic.Pointer[Map]
}

// New returns a Router over m, which must be valid.
func New(m *Map) (*Router, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	r := &Router{}
	r.m.Store(m)
	return r, nil
}

// Map returns the current snapshot.
func (r *Router) Map() *Map { return r.m.Load() }

// Swap installs a new validated map; sessions already routed keep theirs.
func (r *Router) Swap(m *Map) error {
	if err := m.Validate(); err != nil {
		return err
	}
	r.m.Store(m)
	return nil
}

// RouteSession returns the target for a session's upstream connection:
// for now the primary of the first shard.
func (r *Router) RouteSession(SessionFacts) (Target, error) {
	m := r.m.Load()
	s := m.Shards[0]
	return Target{Shard: s.Name, Role: Primary, Host: s.Primary}, nil
}
