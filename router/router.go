package router

import (
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

// Target is one upstream connection destination: a shard, a role and the
// host chosen for it. It is comparable (the proxy keys its pools by it), so
// multi-shard routing lives in Decision.Shards, not here: a fan-out or a
// two-phase commit is a list of Targets, one per shard.
type Target struct {
	Shard string
	Role  Role
	Host  Host
}

// String returns "shard/role".
func (t Target) String() string { return t.Shard + "/" + t.Role.String() }

// DefaultPlanCacheSize is the number of statement texts whose plans a
// Router keeps (per map snapshot).
const DefaultPlanCacheSize = 4096

// Router routes sessions and statements using the current Map. It is safe
// for concurrent use and never blocks on I/O: the map is an immutable
// snapshot behind an atomic pointer, swapped whole by Swap, and each
// snapshot carries its own bounded plan cache.
type Router struct {
	cur atomic.Pointer[snapshot]
}

// snapshot is one map with its lookup tables and plan cache.
type snapshot struct {
	*compiled
	cache *planCache
}

// New returns a Router over m, which must be valid (see Map.Validate).
func New(m *Map) (*Router, error) {
	r := &Router{}
	if err := r.Swap(m); err != nil {
		return nil, err
	}
	return r, nil
}

// Map returns the current snapshot. Callers must not modify it.
func (r *Router) Map() *Map { return r.cur.Load().m }

// Swap installs a new map after validating it; an invalid map leaves the
// current one in place and returns every problem. Statements routed before
// the swap keep their decisions; plans are recompiled lazily against the
// new map.
func (r *Router) Swap(m *Map) error {
	c, err := compileMap(m)
	if err != nil {
		return err
	}
	r.cur.Store(&snapshot{compiled: c, cache: newPlanCache(DefaultPlanCacheSize)})
	return nil
}

// RouteSession returns the target for a session's first upstream
// connection, before any statement is known: the primary of the shard
// named by the session's brownie.shard hint, else of its brownie.team_id
// hint's shard, else of the first shard.
func (r *Router) RouteSession(f SessionFacts) (Target, error) {
	s := r.cur.Load()
	idx := 0
	if f.ShardHint != "" {
		i, err := s.shardByName(f.ShardHint, "brownie.shard")
		if err != nil {
			return Target{}, err
		}
		idx = i
	} else if f.TeamHint != "" {
		k, err := s.hintKey(f.TeamHint)
		if err != nil {
			return Target{}, err
		}
		idx, _ = s.place(k)
	}
	sh := s.m.Shards[idx]
	return Target{Shard: sh.Name, Role: Primary, Host: sh.Primary}, nil
}

// Place returns the name of the shard that holds team k under the current
// map: its override if it has one, else its hash placement. Keys of
// another type than the map's are hashed as they are.
func (r *Router) Place(k Key) string {
	s := r.cur.Load()
	i, _ := s.place(k)
	return s.m.Shards[i].Name
}

// ParseKey parses a team key in text form with the current map's key type.
func (r *Router) ParseKey(text string) (Key, error) {
	return ParseKey(r.cur.Load().m.KeyType, text)
}

// Plan returns the compiled plan of a statement text, from the cache when
// the text (without its leading comments, so hint comments do not defeat
// the cache) was seen before under the current map. A text the parser
// rejects yields a usable plan (it routes like a statement without tables)
// and the parser's error as a *pgerr.Error with SQLSTATE 42601.
func (r *Router) Plan(sql string) (*StmtPlan, error) {
	_, rest, _ := scanLeadingComments(sql)
	p := r.cur.Load().plan(rest)
	return p, p.parseErr
}

// CheckHint validates a hint against the current map: a team key of the
// map's key type (22P02), a known shard name (42704), a valid role
// (22023). Use it for startup options; Route checks statement hints
// itself.
func (r *Router) CheckHint(h Hint) error {
	if h.Reset {
		return nil
	}
	s := r.cur.Load()
	switch h.Name {
	case HintTeam:
		_, err := s.hintKey(h.Value)
		return err
	case HintShard:
		_, err := s.shardByName(h.Value, "brownie.shard")
		return err
	case HintRole:
		_, err := parseRole(h.Value)
		return err
	}
	return nil
}

// SessionHints recognises the statements of sql that set routing hints —
// SET [LOCAL] brownie.team_id / brownie.shard / brownie.role, RESET of
// them, RESET ALL, DISCARD ALL and set_config('brownie.…', 'literal', …) —
// and returns their hints, validated, in order. Hints whose value is a
// Bind parameter come with Route's Decision.SetHints instead.
func (r *Router) SessionHints(sql string) ([]Hint, error) {
	_, rest, _ := scanLeadingComments(sql)
	s := r.cur.Load()
	p := s.plan(rest)
	return s.resolveSetHints(p, nil)
}

// plan returns the cached plan of text, compiling it on a miss.
func (s *snapshot) plan(text string) *StmtPlan {
	if p := s.cache.get(text); p != nil {
		return p
	}
	p := compilePlan(s.compiled, text)
	return s.cache.put(text, p)
}
