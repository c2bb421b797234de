package proxy

import (
	"maps"
	"sync"
)

// paramSet is one set of named values, immutable once made: the
// ParameterStatus values an upstream reports, or the settings of a
// client's startup packet. Equal values share one set, so comparing two
// sets is comparing two pointers: a session moving to another upstream of
// the same pool (transaction mode: every transaction) learns that the
// client already knows every reported value, and that the upstream has
// the client's startup settings applied (upstream.appliedTag).
type paramSet struct{ values map[string]string }

// maxParamSets bounds the sets a paramSets keeps: a sidecar's upstreams
// report a handful of distinct sets (one per server setting that differs,
// such as in_hot_standby on replicas), and its clients send a handful of
// distinct startup settings (one per application or driver
// configuration).
const maxParamSets = 16

// paramSets interns sets of values. Safe for concurrent use.
type paramSets struct {
	mu     sync.Mutex
	recent []*paramSet // most recently made or found first
}

// of returns the set equal to u's current values, interning them when u's
// values changed since its last call. The caller owns u (it is the only
// goroutine reading it). A set dropped from the bound still serves the
// upstreams holding it; they are equal by value, not by pointer, to a new
// one, which only costs a comparison of values.
func (ps *paramSets) of(u *upstream) *paramSet {
	if u.pset != nil && u.psetVersion == u.paramsVersion {
		return u.pset
	}
	set := ps.intern(u.params)
	u.pset, u.psetVersion = set, u.paramsVersion
	return set
}

// intern returns the set equal to values, which the caller must not
// change, making one when none of the bound is.
func (ps *paramSets) intern(values map[string]string) *paramSet {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var set *paramSet
	for i, s := range ps.recent {
		if maps.Equal(s.values, values) {
			set = s
			copy(ps.recent[1:i+1], ps.recent[:i])
			break
		}
	}
	if set == nil {
		set = &paramSet{values: maps.Clone(values)}
		if len(ps.recent) < maxParamSets {
			ps.recent = append(ps.recent, nil)
		}
		copy(ps.recent[1:], ps.recent)
	}
	ps.recent[0] = set
	return set
}
