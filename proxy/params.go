package proxy

import (
	"maps"
	"sync"
)

// paramSet is one set of ParameterStatus values, immutable once made.
// Upstreams reporting equal values share one set, so a session moving to
// another upstream of the same pool (transaction mode: every transaction)
// learns that the client already knows every value by comparing two
// pointers.
type paramSet struct{ values map[string]string }

// maxParamSets bounds the sets paramSets keeps: a sidecar's upstreams
// report a handful of distinct sets (one per server setting that differs,
// such as in_hot_standby on replicas).
const maxParamSets = 16

// settingsTag names one set of startup settings (see settingsTags): two
// sessions with the same tag started with equal settings, and an upstream
// whose appliedTag is a session's tag has exactly that session's settings
// applied.
type settingsTag struct{ values map[string]string }

// settingsTags interns the settings clients send in their startup packets,
// so that in transaction mode a session taking an upstream last used by a
// client with the same settings (the usual case: one application's pool)
// finds nothing to apply by comparing two pointers. Bounded like
// paramSets; a tag dropped from the bound stays valid. Safe for concurrent
// use.
type settingsTags struct {
	mu     sync.Mutex
	recent []*settingsTag // most recently made or found first
}

// of returns the tag of settings, which the caller must not change.
func (ts *settingsTags) of(settings map[string]string) *settingsTag {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var tag *settingsTag
	for i, t := range ts.recent {
		if maps.Equal(t.values, settings) {
			tag = t
			copy(ts.recent[1:i+1], ts.recent[:i])
			break
		}
	}
	if tag == nil {
		tag = &settingsTag{values: maps.Clone(settings)}
		if len(ts.recent) < maxParamSets {
			ts.recent = append(ts.recent, nil)
		}
		copy(ts.recent[1:], ts.recent)
	}
	ts.recent[0] = tag
	return tag
}

// paramSets interns the values upstreams report. Safe for concurrent use.
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
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var set *paramSet
	for i, s := range ps.recent {
		if maps.Equal(s.values, u.params) {
			set = s
			copy(ps.recent[1:i+1], ps.recent[:i])
			break
		}
	}
	if set == nil {
		set = &paramSet{values: maps.Clone(u.params)}
		if len(ps.recent) < maxParamSets {
			ps.recent = append(ps.recent, nil)
		}
		copy(ps.recent[1:], ps.recent)
	}
	ps.recent[0] = set
	u.pset, u.psetVersion = set, u.paramsVersion
	return set
}
