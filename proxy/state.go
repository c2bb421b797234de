package proxy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// dirtyState records what the client's statements in the current
// transaction may have changed in the upstream's session state. It is
// settled at the next idle ReadyForQuery: values are read back (so a
// rolled-back SET or a SET LOCAL leaves no trace) and startup settings the
// client RESET are restored, as Postgres restores startup values on RESET.
type dirtyState struct {
	set      map[string]bool
	reset    map[string]bool
	resetAll bool
	discard  bool
}

func (d *dirtyState) any() bool {
	return len(d.set) > 0 || len(d.reset) > 0 || d.resetAll || d.discard
}

// note merges a statement's analysis. Called under ss.mu.
func (d *dirtyState) note(a *analysis) {
	if d.set == nil {
		d.set, d.reset = map[string]bool{}, map[string]bool{}
	}
	for _, n := range a.setNames {
		d.set[n] = true
	}
	for _, n := range a.reset {
		d.reset[n] = true
	}
	d.resetAll = d.resetAll || a.resetAll
	d.discard = d.discard || a.discard
}

// syncQuery returns the statement that makes u's settings equal to want,
// or "" when they already are. Names are validated GUC names; values are
// quoted literals.
func syncQuery(want, applied map[string]string) string {
	var sets, resets []string
	for _, name := range sortedKeys(want) {
		if v, ok := applied[name]; !ok || v != want[name] {
			sets = append(sets, fmt.Sprintf("pg_catalog.set_config(%s, %s, false)", quoteLiteral(name), quoteLiteral(want[name])))
		}
	}
	for _, name := range sortedKeys(applied) {
		if _, ok := want[name]; !ok && validGUCName(name) {
			resets = append(resets, "RESET "+name)
		}
	}
	var parts []string
	if len(sets) > 0 {
		parts = append(parts, "SELECT "+strings.Join(sets, ", "))
	}
	parts = append(parts, resets...)
	return strings.Join(parts, "; ")
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// syncSettings applies the client's settings to u before the session
// goroutine forwards the first message of a transaction. The relay
// goroutine is not running. Returns the reported parameters that changed
// (to tell the client) or an upstream error.
func (ss *session) syncSettings(u *upstream) error {
	ss.mu.Lock()
	tag := ss.wantTagLocked()
	if tag != nil && u.appliedTag == tag { // the common case: nothing to do
		ss.mu.Unlock()
		return nil
	}
	if maps.Equal(ss.want, u.applied) {
		u.appliedTag = tag
		ss.mu.Unlock()
		return nil
	}
	q := syncQuery(ss.want, u.applied)
	want := maps.Clone(ss.want)
	ss.mu.Unlock()
	if q == "" {
		return nil
	}
	if err := u.exec(q, nil); err != nil {
		return err
	}
	u.applied, u.appliedTag = want, tag
	ss.srv.metrics.SettingsSyncs.Inc()
	return nil
}

// wantTagLocked returns the tag of the settings the client expects while
// they are its startup settings, or nil once it changed them. Called with
// ss.mu held.
func (ss *session) wantTagLocked() *paramSet {
	if ss.wantShared {
		return ss.startupTag
	}
	return nil
}

// reportParams sends the client ParameterStatus for every reported value
// of u that differs from what the client was last told. Called by the
// goroutine that currently writes to the client.
func (ss *session) reportParams(u *upstream, flush bool) error {
	ss.mu.Lock()
	msgs := ss.paramsToReportLocked(u)
	ss.mu.Unlock()
	if len(msgs) == 0 {
		return nil
	}
	return ss.cw.send(flush, msgs...)
}

// reportParamsLocked is reportParams called with ss.mu held, which it
// lets go of only while it sends, when there is anything to send (usually
// a connection reports the values of the session's previous ones).
func (ss *session) reportParamsLocked(u *upstream) error {
	msgs := ss.paramsToReportLocked(u)
	if len(msgs) == 0 {
		return nil
	}
	ss.mu.Unlock()
	err := ss.cw.send(false, msgs...)
	ss.mu.Lock()
	return err
}

// paramsToReportLocked returns the ParameterStatus messages reportParams
// sends for u and records them as told; nil when there are none (the
// common case, which allocates nothing). Called with ss.mu held, by the
// goroutine that currently writes to the client, which must send what it
// returns before anything else reaches the client.
func (ss *session) paramsToReportLocked(u *upstream) []pgproto3.BackendMessage {
	if u == ss.reportedFor && u.paramsVersion == ss.reportedVersion {
		return nil // nothing changed since the last report (the common case)
	}
	ss.reportedFor, ss.reportedVersion = u, u.paramsVersion
	set := ss.srv.params.of(u) // takes the server's paramSets lock inside ss.mu, never the reverse
	if set == ss.reportedSet {
		return nil // another upstream with the values last reported (transaction mode)
	}
	// Another upstream of the same pool usually reports the same values:
	// look for a difference before sorting anything (transaction mode
	// changes upstream at every transaction).
	var names []string
	for name, v := range u.params {
		if ss.seen[name] != v {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		ss.reportedSet = set
		return nil
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
	msgs := make([]pgproto3.BackendMessage, 0, len(names))
	for _, name := range names {
		v := u.params[name]
		ss.setSeenLocked(name, v)
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: name, Value: v})
	}
	ss.reportedSet = set // after setSeenLocked, which clears it
	return msgs
}

// settle reconciles session state after a transaction that changed it. It
// runs in the relay goroutine at an idle ReadyForQuery, before that
// ReadyForQuery is forwarded, while the session goroutine is held off
// upstream writes (ss.internal). It restores startup settings the client
// RESET, reads back the values of settings it SET, and records both as the
// client's wanted state and the upstream's applied state.
func (ss *session) settle(u *upstream, d dirtyState) error {
	ss.mu.Lock()
	if d.discard {
		u.stmts.clear()
		u.unnamed = nil
		if d.resetAll { // DISCARD ALL also drops pins
			for r := range ss.pins {
				if r != PinSessionMode {
					delete(ss.pins, r)
				}
			}
			ss.unpinMetricLocked()
		}
	}
	if d.resetAll {
		u.applied, u.appliedTag = map[string]string{}, nil
		ss.want, ss.wantShared = ss.startup, true
	}
	var restore, read []string
	for n := range d.reset {
		if _, ok := ss.startup[n]; ok {
			restore = append(restore, n)
		} else {
			ss.ownWantLocked()
			delete(ss.want, n)
			delete(u.applied, n)
			u.appliedTag = nil
		}
	}
	if d.resetAll {
		restore = sortedKeys(ss.startup)
	}
	for n := range d.set {
		if !slices.Contains(restore, n) {
			read = append(read, n)
		}
	}
	startup := maps.Clone(ss.startup)
	ss.mu.Unlock()
	slices.Sort(restore)
	slices.Sort(read)

	var cols []string
	for _, n := range restore {
		cols = append(cols, fmt.Sprintf("pg_catalog.set_config(%s, %s, false)", quoteLiteral(n), quoteLiteral(startup[n])))
	}
	for _, n := range read {
		cols = append(cols, fmt.Sprintf("pg_catalog.current_setting(%s, true)", quoteLiteral(n)))
	}
	if len(cols) == 0 {
		return nil
	}
	names := append(restore, read...)
	var values []*string
	err := u.exec("SELECT "+strings.Join(cols, ", "), func(row [][]byte) {
		values = make([]*string, len(row))
		for i, v := range row {
			if v != nil {
				s := string(v)
				values[i] = &s
			}
		}
	})
	if err != nil {
		return err
	}
	if len(values) != len(names) {
		return pgerr.Errorf(pgerr.InternalError, "settings read-back returned %d values for %d settings", len(values), len(names))
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.ownWantLocked()
	u.appliedTag = nil
	for i, n := range names {
		if values[i] == nil { // an unknown custom setting: nothing to carry
			delete(ss.want, n)
			delete(u.applied, n)
			continue
		}
		ss.want[n] = *values[i]
		u.applied[n] = *values[i]
	}
	ss.srv.metrics.SettingsSyncs.Inc()
	return nil
}
