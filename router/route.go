package router

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// SessionFacts are what the proxy knows about a client session when it
// routes a statement. The proxy owns them; the router only reads them.
type SessionFacts struct {
	Database string
	User     string
	// TeamHint is the brownie.team_id in effect for the session (from SET,
	// SET LOCAL, set_config or startup options), in text form; "" if none.
	TeamHint string
	// ShardHint is the brownie.shard in effect; "" if none.
	ShardHint string
	// RolePrimary is true while brownie.role = primary is in effect.
	RolePrimary bool
	// InTransaction is true inside an explicit transaction block.
	InTransaction bool
	// ReadOnlyTransaction is true inside BEGIN READ ONLY (or with
	// default_transaction_read_only on).
	ReadOnlyTransaction bool
	// ShardsInUse names the shards the current transaction already holds
	// connections to, first used first; statements that may run anywhere
	// prefer them.
	ShardsInUse []string
}

// StmtInfo is one statement to route: its text and, for the extended
// protocol, its Bind parameters. Route a parameterised statement at Bind
// (or Execute), when the values are known: a key read from a parameter
// that is not supplied counts as no key.
type StmtInfo struct {
	// SQL is the statement text (a Query's text, or the Parse behind a
	// Bind), leading comments included: they may carry hints.
	SQL string
	// Params are the Bind parameter values; nil is SQL NULL.
	Params [][]byte
	// Formats are Bind's parameter format codes: none (all text), one (for
	// all) or one per parameter; 1 is binary.
	Formats []int16
	// ParamOIDs are the parameter types from Parse; 0 is unspecified.
	ParamOIDs []uint32
}

// Kind is the shape of a routing decision.
type Kind uint8

// Decision kinds.
const (
	// AnyShard: the statement needs no particular shard (no table, only
	// replicated or catalog tables); Shards lists every shard, best first
	// (those the transaction uses, then the team hint's shard).
	AnyShard Kind = iota
	// OneShard: exactly Shards[0].
	OneShard
	// SomeShards: every shard in Shards (more than one, not all).
	SomeShards
	// AllShards: every shard of the map, in Shards.
	AllShards
)

// String returns a label for k.
func (k Kind) String() string {
	switch k {
	case AnyShard:
		return "any"
	case OneShard:
		return "one"
	case SomeShards:
		return "some"
	case AllShards:
		return "all"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Reason says what decided a route; its String is a bounded metric label.
type Reason uint8

// Reasons, from the weakest evidence to the strongest: when several tables
// decide, the decision reports the first that applies in this order:
// SchemaChange, Replicated (a write), KeylessPolicy, Hint, Override, Key,
// Replicated (a read), NoTable.
const (
	// ReasonNoTable: no table to route by (SELECT 1, SET, SHOW, BEGIN).
	ReasonNoTable Reason = iota
	// ReasonUnparsed: the text does not parse; the server reports why.
	ReasonUnparsed
	// ReasonKey: placement of the keys found in the statement.
	ReasonKey
	// ReasonOverride: a team override of the map.
	ReasonOverride
	// ReasonHint: brownie.shard, or brownie.team_id for a keyless statement.
	ReasonHint
	// ReasonKeylessPolicy: a table's keyless policy (all or default).
	ReasonKeylessPolicy
	// ReasonReplicated: only replicated tables are read, or a replicated
	// table is written (every shard).
	ReasonReplicated
	// ReasonSchemaChange: DDL and other utility statements (every shard).
	ReasonSchemaChange
)

// String returns the metric label of r.
func (r Reason) String() string {
	switch r {
	case ReasonNoTable:
		return "no_table"
	case ReasonUnparsed:
		return "unparsed"
	case ReasonKey:
		return "key"
	case ReasonOverride:
		return "override"
	case ReasonHint:
		return "hint"
	case ReasonKeylessPolicy:
		return "keyless_policy"
	case ReasonReplicated:
		return "replicated"
	case ReasonSchemaChange:
		return "schema_change"
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// Decision is where a statement goes and why. It is a value owned by the
// caller.
type Decision struct {
	Kind Kind
	// Shards are shard names: the one target, the targets, or (AnyShard)
	// every shard in order of preference.
	Shards []string
	// ReadOnly is true when the statement only reads: a SELECT (or SHOW,
	// EXPLAIN of one) with no locking clause, no data-modifying CTE and no
	// writing function.
	ReadOnly bool
	// TxFree is true for plain SELECTs calling no function but built-in
	// aggregates, string, number, JSON and array functions: at READ
	// COMMITTED, where each statement takes its own snapshot, such a
	// statement answers the same outside the transaction it was sent in
	// (or in another one), and leaves nothing behind in it.
	TxFree bool
	// Replica is true when the statement may run on a replica: ReadOnly,
	// not forced to the primary, and outside an explicit transaction or in
	// a read-only one. Read-your-writes is the proxy's to enforce.
	Replica bool
	// ForcePrimary is true under brownie:role=primary (comment or setting).
	ForcePrimary bool
	// Broadcast is true when the statement changes replicated data or the
	// schema: it must run identically on every shard (atomically, with
	// two-phase commit), answering with one shard's result.
	Broadcast bool
	// Inserts is true when the statement inserts rows into a sharded
	// table: run on several shards it would insert every row on each, so
	// the proxy must not fan it out.
	Inserts bool
	Reason  Reason
	// SetHints are the routing hints the statement itself sets (SET
	// brownie.*, RESET, set_config with literal or Bind values), validated,
	// for the proxy to track for the session or transaction.
	SetHints []Hint
	// Copy, for COPY … FROM STDIN into a sharded table, says how to split
	// its rows: each row goes to the shard of its key column's value
	// (Kind AllShards; the proxy sends each shard its rows).
	Copy *CopySplit

	why []why
}

// errApart refuses a statement spanning shards that joins two sharded
// tables on something other than their keys.
func errApart(names []string) error {
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "a join of sharded tables %s and %s on columns other than their keys across shards is not supported", names[0], names[1])
	e.Detail = "Each shard joins only its own rows, so pairs of rows on different shards would be missed."
	e.Hint = "join them on their key columns (team_id), or add the team key so the statement runs on one shard"
	return e
}

// CopySplit describes the rows of a COPY into a sharded table.
type CopySplit struct {
	// Table is the table as named in the statement; KeyColumn its key
	// column.
	Table, KeyColumn string
	// NullShard receives rows whose key is NULL; "" refuses them.
	NullShard string
}

// why is one table's part in a decision, for Explain.
type why struct {
	table  string
	reason Reason
	shard  string // "" for all shards
	key    Key
	policy KeylessPolicy
	null   bool
	more   int // this many more keys, not listed
}

// maxWhyKeys is how many keys per table Explain lists.
const maxWhyKeys = 8

// Explain returns a one-line human account of the decision, as the route
// command prints and debug logs record it. It may contain team keys: not
// for metric labels.
func (d Decision) Explain() string {
	var b strings.Builder
	switch d.Kind {
	case AnyShard:
		b.WriteString("any shard")
		if len(d.Shards) > 0 {
			b.WriteString(" (prefer " + d.Shards[0] + ")")
		}
	case OneShard:
		b.WriteString(d.Shards[0])
	case AllShards:
		b.WriteString("all shards")
	default:
		b.WriteString(strings.Join(d.Shards, ", "))
	}
	b.WriteString(": " + d.Reason.String())
	for i, w := range d.why {
		if i == 0 {
			b.WriteString(" — ")
		} else {
			b.WriteString("; ")
		}
		if w.table != "" {
			b.WriteString(w.table + " ")
		}
		switch w.reason {
		case ReasonKey, ReasonOverride:
			if w.more < 0 {
				b.WriteString("rows split by key")
				continue
			}
			if w.more > 0 {
				b.WriteString("and " + strconv.Itoa(w.more) + " more keys")
				continue
			}
			if w.null {
				b.WriteString("NULL key → " + w.shard + " (null_shard)")
			} else {
				b.WriteString("key " + w.key.String() + " → " + w.shard)
				if w.reason == ReasonOverride {
					b.WriteString(" (override)")
				} else {
					b.WriteString(" (hash)")
				}
			}
		case ReasonHint:
			if !w.key.IsZero() {
				b.WriteString("no key, brownie.team_id " + w.key.String() + " → " + w.shard)
			} else {
				b.WriteString("brownie.shard → " + w.shard)
			}
		case ReasonKeylessPolicy:
			if w.shard == "" {
				b.WriteString("no key, keyless policy " + w.policy.String() + " → every shard")
			} else {
				b.WriteString("no key, keyless policy " + w.policy.String() + " → " + w.shard)
			}
		case ReasonReplicated:
			b.WriteString("replicated table written → every shard")
		case ReasonSchemaChange:
			b.WriteString("schema change → every shard")
		case ReasonUnparsed:
			b.WriteString("does not parse; the server reports the error")
		}
	}
	if d.ReadOnly {
		b.WriteString(" [read-only")
		if d.Replica {
			b.WriteString(", replica ok")
		}
		b.WriteString("]")
	}
	if d.ForcePrimary {
		b.WriteString(" [primary forced]")
	}
	return b.String()
}

// Route decides where one statement goes. It reads only its arguments and
// the current map snapshot; it never blocks. Errors are *pgerr.Error for
// the client: 08004 (a keyless statement under policy reject, an
// unlisted table), 42704 (unknown shard or setting in a hint), 22P02 or
// 22003 (a malformed key), 22023 (a malformed comment hint), 42501 (the
// tenant guard: a key that disagrees with the session's brownie.team_id).
//
// Precedence: brownie.shard (comment, then the statement's own SET, then
// the session) sends everything to that shard; otherwise each sharded
// table goes where its keys place it, or, without keys, to the
// brownie.team_id hint's shard, or by its keyless policy.
func (r *Router) Route(f SessionFacts, st StmtInfo) (Decision, error) {
	s := r.cur.Load()
	ch, rest, err := scanLeadingComments(st.SQL)
	if err != nil {
		return Decision{}, err
	}
	return s.route(f, ch, s.plan(rest), &st)
}

func (s *snapshot) route(f SessionFacts, ch commentHints, p *StmtPlan, st *StmtInfo) (Decision, error) {
	n := len(s.m.Shards)
	e := &env{kt: s.m.KeyType, params: st.Params, formats: st.Formats, oids: st.ParamOIDs}
	d := Decision{ReadOnly: p.readOnly, TxFree: p.txFree}

	sets, err := s.resolveSetHints(p, e)
	if err != nil {
		return Decision{}, err
	}
	d.SetHints = sets
	teamText, teamFrom := f.TeamHint, "the session's brownie.team_id"
	shardText, shardFrom := f.ShardHint, "the session's brownie.shard"
	primary := f.RolePrimary
	for _, h := range sets {
		switch {
		case h.Name == HintAll:
			teamText, shardText, primary = "", "", false
		case h.Name == HintTeam:
			teamText, teamFrom = h.Value, "SET brownie.team_id"
		case h.Name == HintShard:
			shardText, shardFrom = h.Value, "SET brownie.shard"
		case h.Name == HintRole:
			primary, _ = parseRole(h.Value)
			if h.Reset {
				primary = false
			}
		}
	}
	if ch.team != "" {
		teamText, teamFrom = ch.team, "the brownie:team_id comment"
	}
	if ch.shard != "" {
		shardText, shardFrom = ch.shard, "the brownie:shard comment"
	}
	d.ForcePrimary = primary || ch.primary

	var team Key
	hasTeam := teamText != ""
	if hasTeam {
		if team, err = s.hintKey(teamText); err != nil {
			return Decision{}, withDetail(err, "In "+teamFrom+".")
		}
	}
	shardHint := -1
	if shardText != "" {
		if shardHint, err = s.shardByName(shardText, shardFrom); err != nil {
			return Decision{}, err
		}
	}

	// Keys of every sharded table reference, and the tenant guard.
	type refKeys struct {
		ks         keySet
		restricted bool
	}
	outs := make([]refKeys, len(p.refs))
	for i, ref := range p.refs {
		ks, ok, err := e.evalRef(ref)
		if err != nil {
			return Decision{}, withDetail(err, "In the key of table "+ref.name+" ("+ref.t.KeyColumn+").")
		}
		outs[i] = refKeys{ks, ok}
	}
	if hasTeam {
		for _, v := range p.guard {
			ks, _, err := e.value(v)
			if err != nil {
				return Decision{}, err
			}
			for _, k := range ks.keys {
				if k != team {
					return Decision{}, errTenantGuard(k, team, teamFrom)
				}
			}
		}
	}

	if p.parseErr != nil && shardHint < 0 {
		d.Reason = ReasonUnparsed
		d.why = []why{{reason: ReasonUnparsed}}
		return s.anyShard(d, f, team, hasTeam), nil
	}
	if shardHint < 0 && p.copyInto != nil && n > 1 {
		ref := p.copyInto
		d.Kind, d.Reason = AllShards, ReasonKey
		d.Copy = &CopySplit{Table: ref.name, KeyColumn: ref.t.KeyColumn, NullShard: ref.t.NullShard}
		for _, sh := range s.m.Shards {
			d.Shards = append(d.Shards, sh.Name)
		}
		d.why = []why{{table: ref.name, reason: ReasonKey, more: -1}}
		return d, nil
	}
	if shardHint >= 0 {
		d.Kind, d.Shards, d.Reason = OneShard, []string{s.m.Shards[shardHint].Name}, ReasonHint
		d.why = []why{{reason: ReasonHint, shard: d.Shards[0]}}
		d.Replica = s.replicaOK(d, f)
		return d, nil
	}

	set := make([]bool, n)
	var seen [ReasonSchemaChange + 1]bool
	note := func(w why) {
		seen[w.reason] = true
		d.why = append(d.why, w)
	}
	for i, ref := range p.refs {
		o := outs[i]
		d.Inserts = d.Inserts || ref.insert
		// NULL keys live on null_shard; without one their rows could be
		// anywhere, as if there were no key.
		unplacedNull := o.ks.null && ref.t.NullShard == ""
		if o.restricted {
			for j, k := range o.ks.keys {
				idx, ov := s.place(k)
				set[idx] = true
				w := why{table: ref.name, reason: ReasonKey, shard: s.m.Shards[idx].Name, key: k}
				if ov {
					w.reason = ReasonOverride
				}
				if j < maxWhyKeys {
					note(w)
				} else {
					seen[w.reason] = true
				}
			}
			if more := len(o.ks.keys) - maxWhyKeys; more > 0 {
				note(why{table: ref.name, reason: ReasonKey, more: more})
			}
			if o.ks.null && ref.t.NullShard != "" {
				idx := s.shardIdx[ref.t.NullShard]
				set[idx] = true
				note(why{table: ref.name, reason: ReasonKey, shard: ref.t.NullShard, null: true})
			}
			if !unplacedNull {
				// Also when no key is left (key = NULL): no row matches,
				// the statement may run anywhere.
				continue
			}
		}
		if hasTeam {
			idx, _ := s.place(team)
			set[idx] = true
			note(why{table: ref.name, reason: ReasonHint, shard: s.m.Shards[idx].Name, key: team})
			continue
		}
		if n == 1 {
			set[0] = true
			note(why{table: ref.name, reason: ReasonKeylessPolicy, shard: s.m.Shards[0].Name, policy: ref.t.Keyless})
			continue
		}
		switch ref.t.Keyless {
		case KeylessReject:
			return Decision{}, errNoKey(ref)
		case KeylessAll:
			if ref.insert {
				return Decision{}, errNoKey(ref)
			}
			for j := range set {
				set[j] = true
			}
			note(why{table: ref.name, reason: ReasonKeylessPolicy, policy: KeylessAll})
		case KeylessDefault:
			set[s.shardIdx[ref.t.DefaultShard]] = true
			note(why{table: ref.name, reason: ReasonKeylessPolicy, policy: KeylessDefault, shard: ref.t.DefaultShard})
		}
	}
	if n > 1 && len(p.unlisted) > 0 {
		return Decision{}, errUnlisted(p.unlisted[0].name)
	}
	replicatedRead := len(p.unlisted) > 0
	for _, u := range p.repl {
		if u.write {
			d.Broadcast = true
			note(why{table: u.name, reason: ReasonReplicated})
		} else {
			replicatedRead = true
		}
	}
	if p.ddl {
		d.Broadcast = true
		note(why{reason: ReasonSchemaChange})
	}
	if d.Broadcast {
		for j := range set {
			set[j] = true
		}
	}

	count := 0
	for _, in := range set {
		if in {
			count++
		}
	}
	switch {
	case seen[ReasonSchemaChange]:
		d.Reason = ReasonSchemaChange
	case seen[ReasonReplicated]:
		d.Reason = ReasonReplicated
	case seen[ReasonKeylessPolicy]:
		d.Reason = ReasonKeylessPolicy
	case seen[ReasonHint]:
		d.Reason = ReasonHint
	case seen[ReasonOverride]:
		d.Reason = ReasonOverride
	case seen[ReasonKey]:
		d.Reason = ReasonKey
	case replicatedRead:
		d.Reason = ReasonReplicated
	default:
		d.Reason = ReasonNoTable
	}
	if count == 0 {
		return s.anyShard(d, f, team, hasTeam), nil
	}
	d.Shards = make([]string, 0, count)
	for j, in := range set {
		if in {
			d.Shards = append(d.Shards, s.m.Shards[j].Name)
		}
	}
	switch {
	case count == 1:
		d.Kind = OneShard
	case count == n:
		d.Kind = AllShards
	default:
		d.Kind = SomeShards
	}
	if count > 1 && p.apart != nil && !d.Broadcast {
		return Decision{}, errApart(p.apart)
	}
	d.Replica = s.replicaOK(d, f)
	return d, nil
}

// anyShard completes a decision that may run on any shard: shards in use
// first, then the team hint's shard, then the rest in map order.
func (s *snapshot) anyShard(d Decision, f SessionFacts, team Key, hasTeam bool) Decision {
	n := len(s.m.Shards)
	d.Kind = AnyShard
	d.Shards = make([]string, 0, n)
	taken := make([]bool, n)
	add := func(i int) {
		if !taken[i] {
			taken[i] = true
			d.Shards = append(d.Shards, s.m.Shards[i].Name)
		}
	}
	for _, name := range f.ShardsInUse {
		if i, ok := s.shardIdx[name]; ok {
			add(i)
		}
	}
	if hasTeam {
		i, _ := s.place(team)
		add(i)
	}
	for i := range s.m.Shards {
		add(i)
	}
	d.Replica = s.replicaOK(d, f)
	return d
}

func (s *snapshot) replicaOK(d Decision, f SessionFacts) bool {
	return d.ReadOnly && !d.ForcePrimary && !d.Broadcast && (!f.InTransaction || f.ReadOnlyTransaction)
}

// hintKey parses a brownie.team_id value.
func (s *snapshot) hintKey(text string) (Key, error) {
	return ParseKey(s.m.KeyType, text)
}

// shardByName resolves a brownie.shard value.
func (s *snapshot) shardByName(name, from string) (int, error) {
	if i, ok := s.shardIdx[name]; ok {
		return i, nil
	}
	return -1, pgerr.Errorf(pgerr.UndefinedObject, "unknown shard %q in %s", name, from).
		WithHint("The shard map's shards are " + strings.Join(s.m.ShardNames(), ", ") + ".")
}

// resolveSetHints returns the statement's own hints with parameter values
// filled in (when e is not nil) and validated. An empty value counts as a
// reset.
func (s *snapshot) resolveSetHints(p *StmtPlan, e *env) ([]Hint, error) {
	if p.hintErr != nil {
		return nil, p.hintErr
	}
	if len(p.setHints) == 0 {
		return nil, nil
	}
	out := make([]Hint, 0, len(p.setHints))
	for _, sh := range p.setHints {
		h := sh.h
		if sh.param >= 0 {
			if e == nil || sh.param >= len(e.params) {
				continue
			}
			raw := e.params[sh.param]
			if raw == nil {
				h.Reset = true
			} else {
				h.Value = string(raw)
			}
		}
		if h.Value == "" {
			h.Reset = true
		}
		if h.Reset {
			h.Value = ""
		} else {
			var err error
			switch h.Name {
			case HintTeam:
				_, err = s.hintKey(h.Value)
				err = withDetail(err, "In SET brownie.team_id.")
			case HintShard:
				_, err = s.shardByName(h.Value, "SET brownie.shard")
			case HintRole:
				_, err = parseRole(h.Value)
			}
			if err != nil {
				return nil, err
			}
		}
		out = append(out, h)
	}
	return out, nil
}

// withDetail returns a copy of a *pgerr.Error with Detail set, or err.
func withDetail(err error, detail string) error {
	var pe *pgerr.Error
	if err == nil || !errors.As(err, &pe) {
		return err
	}
	c := *pe
	if c.Detail == "" {
		c.Detail = detail
	}
	return &c
}

func errNoKey(ref *tableRef) error {
	t := ref.t
	if ref.insert {
		return pgerr.Errorf(pgerr.ServerRejected, "INSERT into sharded table %q has no %s value", ref.name, t.KeyColumn).
			WithDetail(insertDetail(ref)).
			WithHint(fmt.Sprintf("Name %s in the column list with a literal or parameter value in every VALUES row, run SET brownie.team_id = '<team>' first, or begin the statement with /* brownie:team_id=<team> */.", t.KeyColumn))
	}
	return pgerr.Errorf(pgerr.ServerRejected, "statement on sharded table %q has no %s.%s key", ref.name, ref.name, t.KeyColumn).
		WithDetail(fmt.Sprintf("Table %s is sharded by %s and its keyless policy is %s: the sidecar cannot tell which shard holds the rows.", ref.name, t.KeyColumn, t.Keyless)).
		WithHint(fmt.Sprintf("Add a predicate on %s.%s (= $1, IN (…) or = ANY($1)), run SET brownie.team_id = '<team>' first, or begin the statement with /* brownie:team_id=<team> */.", ref.name, t.KeyColumn))
}

func insertDetail(ref *tableRef) string {
	d := fmt.Sprintf("Table %s is sharded by %s: without a value the sidecar cannot tell which shard the rows belong to", ref.name, ref.t.KeyColumn)
	if ref.t.Keyless == KeylessAll {
		return d + " (its keyless policy all would insert them on every shard)."
	}
	return d + "."
}

func errUnlisted(name string) error {
	return pgerr.Errorf(pgerr.ServerRejected, "table %q is not in the shard map", name).
		WithDetail("The shard map refuses tables it does not name (unlisted_tables: reject), so that no table is read or written on an arbitrary shard.").
		WithHint(fmt.Sprintf("Add %s to the shard map's tables ({sharded_by: column} or replicated), or set unlisted_tables: replicated.", name))
}

func errTenantGuard(got, want Key, from string) error {
	return pgerr.Errorf(CodeInsufficientPrivilege, "statement for team %s refused: the session is scoped to team %s", got, want).
		WithDetail(fmt.Sprintf("The team was set by %s; a statement may only name that team's key.", from)).
		WithHint("RESET brownie.team_id, or use a session for the other team.")
}
