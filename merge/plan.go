package merge

import (
	"slices"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// Plan is how the rows of one read statement that runs on several shards
// are merged into what one database holding all the rows would return. It
// is built by Analyze from the statement text alone, is immutable, and is
// safe for concurrent use: cache it by text.
//
// The shards run ShardSQL, whose output columns are the client's columns
// (with each avg replaced by its sum) followed by hidden columns: sort and
// grouping expressions that are not output columns, and avg's counts. Run
// merges their rows, Describe turns their RowDescription into the client's.
type Plan struct {
	shardSQL string
	kinds    []string

	// slots are the client's target-list entries, then the hidden
	// columns; every slot but a star is one column.
	slots    []slot
	nTargets int
	// firstStar and lastStar are the indexes of the first and last star
	// targets ("*", "t.*"), or -1: the client's column count is then known
	// only from a RowDescription.
	firstStar, lastStar int
	stars               int

	order      []sortKey
	group      []colRef // grouping columns when agg
	agg        bool     // rows are grouped and combined (aggregates or GROUP BY)
	distinct   bool     // whole-row DISTINCT over the client's columns (or UNION)
	distinctOn []colRef // DISTINCT ON columns; rows arrive sorted by them
	limit      bound
	offset     bound
	withTies   bool // FETCH FIRST ... WITH TIES
}

type slotKind uint8

const (
	slotPlain    slotKind = iota // passed through (in a group: the first row's value)
	slotStar                     // "*" or "t.*": any number of plain columns
	slotAgg                      // an aggregate combined across shards
	slotAvgCount                 // hidden: the count(x) of an avg(x)
)

type aggKind uint8

const (
	aggCount aggKind = iota + 1
	aggSum
	aggMin
	aggMax
	aggAvg
	aggBoolAnd
	aggBoolOr
)

// slot is one entry of the shard's target list.
type slot struct {
	kind  slotKind
	agg   aggKind
	count int // aggAvg: the slot of its count column
}

// colRef names one column: a slot (not a star), or, with slot -1, the
// client column at position pos (an ORDER BY position inside a star's
// columns).
type colRef struct {
	slot int
	pos  int
}

// sortKey is one ORDER BY item.
type sortKey struct {
	col        colRef
	desc       bool
	nullsFirst bool
}

// bound is a LIMIT or OFFSET value: absent, a constant, or a Bind
// parameter.
type bound struct {
	set   bool  // present and not the NULL constant (LIMIT ALL)
	val   int64 // the constant
	param int   // 0-based parameter index, or -1 for a constant
}

// Merge kinds, the values of Kinds.
const (
	KindOrder     = "order"
	KindLimit     = "limit"
	KindAggregate = "aggregate"
	KindGroup     = "group"
	KindDistinct  = "distinct"
)

// ShardSQL is the statement each shard runs instead of the client's text,
// with the same $n parameters meaning the same thing: LIMIT l OFFSET o
// becomes LIMIT l + o with no OFFSET (or no LIMIT at all when groups are
// merged), avg(x) becomes sum(x) plus a hidden count(x) column, and ORDER
// BY, GROUP BY and DISTINCT ON expressions that are not output columns are
// appended as hidden trailing output columns. Leading comments of the
// client's text are not kept.
func (p *Plan) ShardSQL() string { return p.shardSQL }

// Kinds reports what the merge does, as metric label values: any of
// "order", "limit", "aggregate", "group" and "distinct", in that order.
// The slice is the caller's.
func (p *Plan) Kinds() []string { return slices.Clone(p.kinds) }

// hidden returns the number of hidden trailing columns of ShardSQL.
func (p *Plan) hidden() int { return len(p.slots) - p.nTargets }

// clientColumns returns how many of a shard result's n columns the client
// sees, or an error when n does not fit the plan.
func (p *Plan) clientColumns(n int) (int, error) {
	c := n - p.hidden()
	if p.firstStar < 0 && c != p.nTargets || p.firstStar >= 0 && c < p.nTargets-p.stars {
		return 0, pgerr.Errorf(pgerr.ProtocolViolation, "merge: shard result has %d columns, the plan expects %d", n, p.nTargets+p.hidden())
	}
	return c, nil
}

// column returns the result column of ref in a shard result of n columns
// of which the client sees c.
func (p *Plan) column(ref colRef, c int) int {
	switch {
	case ref.slot < 0:
		return ref.pos
	case ref.slot >= p.nTargets:
		return c + ref.slot - p.nTargets
	case p.firstStar < 0 || ref.slot < p.firstStar:
		return ref.slot
	default: // after the last star (references between stars are hidden columns)
		return c - (p.nTargets - ref.slot)
	}
}

// ShardResultFormats maps the client's Bind result-format codes (none, one
// for all, or one per client column) to the codes to bind ShardSQL with on
// every shard, given ShardSQL's column count (from its RowDescription):
// each client column keeps the client's format, and the hidden columns are
// binary when the client asked for any binary column, text otherwise. So
// when the client asks only for text, every shard column is text, and a
// statement's RowDescription (whose format codes are all 0) describes what
// the shards send. Codes that cannot be mapped (a count matching no column
// count) are returned unchanged, for the shards to reject as the server
// would.
func (p *Plan) ShardResultFormats(client []int16, shardColumns int) []int16 {
	h := p.hidden()
	c := shardColumns - h
	if h == 0 || len(client) <= 1 || c < 0 || len(client) != c {
		return client
	}
	hidden := int16(0)
	if slices.Contains(client, 1) {
		hidden = 1
	}
	out := make([]int16, 0, shardColumns)
	out = append(out, client...)
	for range h {
		out = append(out, hidden)
	}
	return out
}

// Describe turns a shard's RowDescription body for ShardSQL (the bytes
// after the 5-byte message header; a statement's or a portal's) into the
// client's: hidden columns are dropped and each avg column, which the
// shard describes as its sum, gets avg's type: numeric for sums of
// integers and numeric, double precision for floating-point sums, interval
// for interval. Format codes are kept.
func (p *Plan) Describe(shardRowDesc []byte) ([]byte, error) {
	fs, err := parseRowDesc(shardRowDesc)
	if err != nil {
		return nil, err
	}
	c, err := p.clientColumns(len(fs))
	if err != nil {
		return nil, err
	}
	fs = fs[:c]
	for i := 0; i < p.nTargets; i++ {
		s := p.slots[i]
		if s.kind != slotAgg || s.agg != aggAvg {
			continue
		}
		col := p.column(colRef{slot: i}, c)
		oid, err := avgType(fs[col].typ)
		if err != nil {
			return nil, err
		}
		f := &fs[col]
		f.typ, f.typmod, f.table, f.attnum = oid, -1, 0, 0
		f.typlen = typeLen(oid)
	}
	return appendRowDesc(make([]byte, 0, len(shardRowDesc)), fs), nil
}

// avgType returns the type of avg(x) given the type of sum(x).
func avgType(sum uint32) (uint32, error) {
	switch sum {
	case oidInt8, oidNumeric:
		return oidNumeric, nil
	case oidFloat4, oidFloat8:
		return oidFloat8, nil
	case oidInterval:
		return oidInterval, nil
	}
	return 0, pgerr.Errorf(pgerr.FeatureNotSupported, "cannot merge avg of %s across shards", typeName(sum))
}

func typeLen(oid uint32) int16 {
	switch oid {
	case oidFloat8, oidInt8:
		return 8
	case oidInterval:
		return 16
	}
	return -1
}
