package merge

import (
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"sync"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/sqltree"
)

// hintOneShard is the advice for a statement that cannot be merged.
const hintOneShard = "add the team key (team_id) so the statement runs on one shard"

// refuse builds the 0A000 error for a construct that cannot be merged
// exactly across shards.
func refuse(hint, format string, args ...any) *pgerr.Error {
	e := pgerr.Errorf(pgerr.FeatureNotSupported, format, args...)
	if hint == "" {
		hint = hintOneShard
	}
	e.Hint = hint
	return e
}

// errShardsFail marks a statement every shard rejects by itself (a
// negative constant LIMIT, an ORDER BY position past the select list):
// Analyze returns no plan and lets the servers report their own error.
var errShardsFail = errors.New("the shards reject the statement")

// hiddenPrefix starts the aliases of hidden columns; an alias keeps a
// hidden column from capturing a bare name in the shard's ORDER BY.
const hiddenPrefix = "_merge_h"

// Analyze plans the merge of one read statement (the text of a Query or
// Parse message, holding a single statement) that runs on several shards.
//
// It returns (nil, nil) when the shards' rows can simply be concatenated:
// the statement has no top-level ORDER BY, LIMIT, OFFSET, aggregate, GROUP
// BY or DISTINCT, is not a SELECT (writes, with or without RETURNING,
// utility statements), does not parse, or is one every shard will reject
// by itself. Only the top-level query is considered: subqueries and CTEs
// run on each shard over that shard's rows.
//
// It returns a *pgerr.Error with code 0A000 (feature_not_supported) naming
// the construct when the statement cannot be merged exactly: window
// functions, INTERSECT and EXCEPT, aggregates other than count, sum, min,
// max, avg, bool_and, bool_or and every, DISTINCT aggregates, aggregates
// inside expressions, HAVING, GROUPING SETS, ROLLUP and CUBE, LIMIT or
// OFFSET given by an expression other than a constant or a parameter,
// FOR UPDATE/SHARE with LIMIT or OFFSET, and ORDER BY with a collation
// other than "C" or a USING operator.
func Analyze(sql string) (*Plan, error) {
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, nil // every shard reports the syntax error
	}
	stmts := tree.GetStmts()
	if len(stmts) != 1 {
		for _, s := range stmts {
			one := &pg.ParseResult{Version: tree.GetVersion(), Stmts: []*pg.RawStmt{s}}
			p, err := analyzeStmt(one)
			if err != nil || p != nil {
				return nil, refuse("send the statements one at a time", "a query string of several statements whose rows must be merged across shards is not supported")
			}
		}
		return nil, nil
	}
	p, err := analyzeStmt(tree)
	if errors.Is(err, errShardsFail) {
		return nil, nil
	}
	return p, err
}

// analyzeStmt plans tree, which holds one statement; it may modify tree.
func analyzeStmt(tree *pg.ParseResult) (*Plan, error) {
	sel := tree.GetStmts()[0].GetStmt().GetSelectStmt()
	if sel == nil || sel.GetIntoClause() != nil {
		return nil, nil
	}
	a := &analyzer{sel: sel, p: &Plan{firstStar: -1, lastStar: -1}}
	var err error
	if isSetOp(sel) {
		err = a.setOp()
	} else {
		err = a.simple()
	}
	if err != nil || a.p == nil {
		return nil, err
	}
	p := a.p
	if len(p.order) > 0 {
		p.kinds = append(p.kinds, KindOrder)
	}
	if p.limit.set || p.offset.set {
		p.kinds = append(p.kinds, KindLimit)
	}
	for _, s := range p.slots {
		if s.kind == slotAgg {
			p.kinds = append(p.kinds, KindAggregate)
			break
		}
	}
	if len(sel.GetGroupClause()) > 0 {
		p.kinds = append(p.kinds, KindGroup)
	}
	if p.distinct || len(p.distinctOn) > 0 {
		p.kinds = append(p.kinds, KindDistinct)
	}
	if len(p.kinds) == 0 {
		return nil, nil
	}
	a.rewriteLimit()
	out, err := sqltree.Print(tree)
	if errors.Is(err, sqltree.ErrParamZero) {
		return nil, errShardsFail // each shard reports the statement's error
	}
	if err != nil {
		return nil, refuse("", "cannot build the statement that merges this read across shards").WithCause(err)
	}
	p.shardSQL = out
	return p, nil
}

func isSetOp(sel *pg.SelectStmt) bool {
	op := sel.GetOp()
	return op != pg.SetOperation_SETOP_NONE && op != pg.SetOperation_SET_OPERATION_UNDEFINED
}

// analyzer builds one Plan.
type analyzer struct {
	sel *pg.SelectStmt
	p   *Plan
	// exprs and names hold, per slot, the expression with locations
	// cleared (nil for a star or an avg's count) and the name the server
	// gives the output column ("" for hidden columns).
	exprs   []*pg.Node
	names   []string
	inSetOp bool
	hiddenN int // hidden columns added so far, for their aliases
}

// simple plans a SELECT without a set operation at the top.
func (a *analyzer) simple() error {
	sel, p := a.sel, a.p
	hasBounds := sel.GetLimitCount() != nil || sel.GetLimitOffset() != nil
	if len(sel.GetValuesLists()) > 0 {
		if len(sel.GetSortClause()) > 0 || hasBounds {
			return refuse("", "VALUES with ORDER BY, LIMIT or OFFSET across shards is not supported")
		}
		a.p = nil
		return nil
	}
	if len(sel.GetWindowClause()) > 0 {
		return refuse("", "window functions across shards are not supported")
	}
	// The target list.
	for i, n := range sel.GetTargetList() {
		rt := n.GetResTarget()
		val := rt.GetVal()
		if isStar(val) {
			p.slots = append(p.slots, slot{kind: slotStar})
			a.addTargetInfo(nil, "")
			p.stars++
			if p.firstStar < 0 {
				p.firstStar = i
			}
			p.lastStar = i
			continue
		}
		if err := checkWindows(val); err != nil {
			return err
		}
		s, err := classify(val)
		if err != nil {
			return err
		}
		name := rt.GetName()
		if name == "" {
			name = figureColname(val)
		}
		p.slots = append(p.slots, s)
		a.addTargetInfo(val, name)
	}
	p.nTargets = len(p.slots)
	for i := 0; i < p.nTargets; i++ {
		if s := p.slots[i]; s.kind == slotAgg && s.agg == aggAvg {
			a.avgRewrite(i, sel.GetTargetList()[i].GetResTarget())
		}
	}
	for _, n := range sel.GetSortClause() {
		if err := checkWindows(n.GetSortBy().GetNode()); err != nil {
			return err
		}
	}
	if err := checkWindows(sel.GetHavingClause()); err != nil {
		return err
	}

	// Aggregation.
	hasAgg := false
	for _, s := range p.slots {
		hasAgg = hasAgg || s.kind == slotAgg
	}
	for _, n := range sel.GetSortClause() {
		hasAgg = hasAgg || containsAgg(n.GetSortBy().GetNode())
	}
	p.agg = hasAgg || len(sel.GetGroupClause()) > 0 || sel.GetHavingClause() != nil
	if p.agg {
		if sel.GetHavingClause() != nil {
			return refuse("", "HAVING over groups spanning shards is not supported")
		}
		if sel.GetGroupDistinct() {
			return refuse("", "GROUP BY DISTINCT across shards is not supported")
		}
		if p.firstStar >= 0 {
			return refuse("", "SELECT * with aggregates or GROUP BY across shards is not supported")
		}
		for _, n := range sel.GetGroupClause() {
			if n.GetGroupingSet() != nil {
				return refuse("", "GROUPING SETS, ROLLUP and CUBE across shards are not supported")
			}
			ref, err := a.resolveGroup(n)
			if err != nil {
				return err
			}
			p.group = append(p.group, ref)
		}
	}
	if len(sel.GetLockingClause()) > 0 && hasBounds {
		return refuse("", "FOR UPDATE or FOR SHARE with LIMIT or OFFSET across shards is not supported")
	}

	// Ordering and DISTINCT.
	if err := a.sortClause(); err != nil {
		return err
	}
	if dc := sel.GetDistinctClause(); len(dc) > 0 {
		if len(dc) == 1 && isEmptyNode(dc[0]) {
			p.distinct = true
		} else if err := a.distinctOn(dc); err != nil {
			return err
		}
	}
	if p.agg {
		// The shards return every partial group; DISTINCT applies to the
		// merged groups only.
		sel.DistinctClause = nil
	}
	return a.bounds()
}

// addTargetInfo records a slot's expression and output name.
func (a *analyzer) addTargetInfo(val *pg.Node, name string) {
	var norm *pg.Node
	if val != nil {
		norm = normalize(val)
	}
	a.exprs = append(a.exprs, norm)
	a.names = append(a.names, name)
}

func isEmptyNode(n *pg.Node) bool { return n == nil || n.GetNode() == nil }

// isStar reports whether a target is "*" or "t.*".
func isStar(n *pg.Node) bool {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.GetFields()) == 0 {
		return false
	}
	return cr.GetFields()[len(cr.GetFields())-1].GetAStar() != nil
}

// sortClause resolves the ORDER BY items.
func (a *analyzer) sortClause() error {
	for _, n := range a.sel.GetSortClause() {
		sb := n.GetSortBy()
		if sb.GetSortbyDir() == pg.SortByDir_SORTBY_USING {
			return refuse("write ASC or DESC", "ORDER BY ... USING across shards is not supported")
		}
		expr := sb.GetNode()
		if err := checkCollation(expr); err != nil {
			return err
		}
		ref, err := a.resolveSort(expr, "ORDER BY")
		if err != nil {
			return err
		}
		if ref.slot >= 0 && a.exprs[ref.slot] != nil {
			if err := checkCollation(a.exprs[ref.slot]); err != nil {
				return err
			}
		}
		k := sortKey{col: ref, desc: sb.GetSortbyDir() == pg.SortByDir_SORTBY_DESC}
		switch sb.GetSortbyNulls() {
		case pg.SortByNulls_SORTBY_NULLS_FIRST:
			k.nullsFirst = true
		case pg.SortByNulls_SORTBY_NULLS_LAST:
			k.nullsFirst = false
		default:
			k.nullsFirst = k.desc
		}
		a.p.order = append(a.p.order, k)
	}
	return nil
}

// checkCollation refuses an ORDER BY expression with an explicit
// collation other than C: the merge compares text bytewise.
func checkCollation(n *pg.Node) error {
	if c := collation(n.GetCollateClause()); c != "" {
		return refuse(`use COLLATE "C", or add the team key (team_id) so the statement runs on one shard`,
			"ORDER BY with collation %q across shards is not supported", c)
	}
	return nil
}

// checkCollations refuses an expression compared by what (min() or
// max()) that applies a collation other than C anywhere.
func checkCollations(n *pg.Node, what string) error {
	var c string
	containsNode(n, func(m protoreflect.Message) bool {
		cc, ok := m.Interface().(*pg.CollateClause)
		if ok {
			c = collation(cc)
		}
		return c != ""
	})
	if c != "" {
		return refuse(`use COLLATE "C", or add the team key (team_id) so the statement runs on one shard`,
			"%s with collation %q across shards is not supported", what, c)
	}
	return nil
}

// collation returns the name a COLLATE clause applies unless it sorts
// bytewise ("C", "POSIX", "ucs_basic"), or "".
func collation(cc *pg.CollateClause) string {
	names := cc.GetCollname()
	if len(names) == 0 {
		return ""
	}
	c := names[len(names)-1].GetString_().GetSval()
	switch c {
	case "C", "POSIX", "ucs_basic":
		return ""
	}
	return c
}

// distinctOn resolves DISTINCT ON items and lines them up with ORDER BY.
func (a *analyzer) distinctOn(items []*pg.Node) error {
	p := a.p
	var keys []colRef
	for _, n := range items {
		ref, err := a.resolveSort(n, "DISTINCT ON")
		if err != nil {
			return err
		}
		if !containsRef(keys, ref) {
			keys = append(keys, ref)
		}
	}
	p.distinctOn = keys
	if len(p.order) == 0 {
		// Without ORDER BY any row of each group will do: have the shards
		// sort by the DISTINCT ON expressions so the merge can stream.
		for _, n := range items {
			a.sel.SortClause = append(a.sel.SortClause, pg.MakeSortByNode(cloneNode(n),
				pg.SortByDir_SORTBY_DEFAULT, pg.SortByNulls_SORTBY_NULLS_DEFAULT, -1))
		}
		for _, k := range keys {
			p.order = append(p.order, sortKey{col: k})
		}
		return nil
	}
	// The server requires the DISTINCT ON expressions to lead the ORDER BY
	// and sorts by the ones ORDER BY leaves out after it.
	lead := min(len(keys), len(p.order))
	for _, k := range p.order[:lead] {
		if !containsRef(keys, k.col) {
			return refuse("write the DISTINCT ON expressions exactly as the leading ORDER BY expressions",
				"DISTINCT ON whose expressions differ from the leading ORDER BY expressions across shards is not supported")
		}
	}
	for _, k := range keys {
		found := false
		for _, o := range p.order {
			found = found || o.col == k
		}
		if !found {
			p.order = append(p.order, sortKey{col: k})
		}
	}
	return nil
}

func containsRef(refs []colRef, r colRef) bool {
	for _, x := range refs {
		if x == r {
			return true
		}
	}
	return false
}

// resolveSort finds the column an ORDER BY or DISTINCT ON item sorts by,
// with the server's rules: an integer constant is a position in the select
// list, a bare name is first an output column name, anything else an
// expression matched against the select list; what is not there becomes a
// hidden column.
func (a *analyzer) resolveSort(n *pg.Node, clause string) (colRef, error) {
	p := a.p
	if pos, ok := intConst(n); ok {
		return a.position(pos)
	}
	if name, ok := bareName(n); ok {
		for i := 0; i < p.nTargets; i++ {
			if a.exprs[i] != nil && a.names[i] == name && p.slots[i].kind != slotStar {
				return a.targetRef(i)
			}
		}
	}
	norm := normalize(n)
	for i := 0; i < p.nTargets; i++ {
		if a.exprs[i] != nil && proto.Equal(a.exprs[i], norm) {
			return a.targetRef(i)
		}
	}
	if a.inSetOp {
		return colRef{}, refuse("order by output column names or positions",
			"%s with an expression over a UNION across shards is not supported", clause)
	}
	return a.hidden(n, norm)
}

// targetRef refers to target i; a target between two stars has no fixed
// position and is referred to through a hidden copy of its expression.
func (a *analyzer) targetRef(i int) (colRef, error) {
	p := a.p
	if p.firstStar >= 0 && i > p.firstStar && i < p.lastStar {
		if a.inSetOp {
			return colRef{}, refuse("order by output column positions",
				"ORDER BY a column between two * over a UNION across shards is not supported")
		}
		return a.hidden(a.exprs[i], a.exprs[i])
	}
	return colRef{slot: i}, nil
}

// position resolves ORDER BY/GROUP BY/DISTINCT ON position pos (1-based).
func (a *analyzer) position(pos int64) (colRef, error) {
	p := a.p
	if pos < 1 || p.firstStar < 0 && pos > int64(p.nTargets) {
		return colRef{}, errShardsFail
	}
	i := int(pos - 1)
	if p.firstStar < 0 || i < p.firstStar {
		return colRef{slot: i}, nil
	}
	return colRef{slot: -1, pos: i}, nil
}

// resolveGroup finds the column a GROUP BY item groups by. For the server
// a bare name is an input column if the FROM clause has one, and only
// otherwise an output column. The merge cannot see the FROM clause's
// columns: it takes a bare name that names an output column for that
// column, unless the output column's own expression refers to an input
// column of that name ("date_trunc('day', created_at) AS created_at"),
// which it refuses.
func (a *analyzer) resolveGroup(n *pg.Node) (colRef, error) {
	p := a.p
	if pos, ok := intConst(n); ok {
		return a.position(pos)
	}
	norm := normalize(n)
	for i := 0; i < p.nTargets; i++ {
		if a.exprs[i] != nil && proto.Equal(a.exprs[i], norm) {
			return colRef{slot: i}, nil
		}
	}
	if name, ok := bareName(n); ok {
		for i := 0; i < p.nTargets; i++ {
			if a.names[i] != name || a.exprs[i] == nil {
				continue
			}
			if refersTo(a.exprs[i], name) {
				return colRef{}, refuse("group by the expression itself or by its position",
					"GROUP BY %s, which is both an output column and a column it is computed from, across shards is not supported", name)
			}
			return colRef{slot: i}, nil
		}
	}
	return a.hidden(n, norm)
}

// refersTo reports whether expression n refers to a column named name
// (qualified or not).
func refersTo(n *pg.Node, name string) bool {
	return containsNode(n, func(m protoreflect.Message) bool {
		cr, ok := m.Interface().(*pg.ColumnRef)
		if !ok || len(cr.GetFields()) == 0 {
			return false
		}
		return cr.GetFields()[len(cr.GetFields())-1].GetString_().GetSval() == name
	})
}

// hidden returns the hidden column for expression n (normalized: norm),
// appending it to the shard's target list if it is not there yet.
func (a *analyzer) hidden(n, norm *pg.Node) (colRef, error) {
	p := a.p
	for i := p.nTargets; i < len(p.slots); i++ {
		if a.exprs[i] != nil && proto.Equal(a.exprs[i], norm) {
			return colRef{slot: i}, nil
		}
	}
	s := slot{kind: slotPlain}
	if p.agg {
		var err error
		if s, err = classify(n); err != nil {
			return colRef{}, err
		}
	}
	i := len(p.slots)
	p.slots = append(p.slots, s)
	a.addTargetInfo(n, "")
	a.appendTarget(proto.Clone(n).(*pg.Node))
	if s.kind == slotAgg && s.agg == aggAvg {
		a.avgRewrite(i, a.sel.TargetList[len(a.sel.TargetList)-1].GetResTarget())
	}
	return colRef{slot: i}, nil
}

// appendTarget adds a hidden output column to the shard's statement.
func (a *analyzer) appendTarget(val *pg.Node) {
	a.hiddenN++
	name := hiddenPrefix + strconv.Itoa(a.hiddenN)
	a.sel.TargetList = append(a.sel.TargetList, pg.MakeResTargetNodeWithNameAndVal(name, val, -1))
}

// avgRewrite turns the avg(x) of slot i (whose ResTarget is rt) into
// sum(x) and appends a hidden count(x) column.
func (a *analyzer) avgRewrite(i int, rt *pg.ResTarget) {
	fc := rt.GetVal().GetFuncCall()
	cnt := &pg.FuncCall{
		Funcname:   []*pg.Node{pg.MakeStrNode("count")},
		Args:       cloneNodes(fc.GetArgs()),
		AggFilter:  cloneNode(fc.GetAggFilter()),
		Funcformat: pg.CoercionForm_COERCE_EXPLICIT_CALL,
		Location:   -1,
	}
	names := fc.GetFuncname()
	names[len(names)-1] = pg.MakeStrNode("sum")
	if rt.GetName() == "" {
		rt.Name = "avg"
	}
	c := len(a.p.slots)
	a.p.slots = append(a.p.slots, slot{kind: slotAvgCount})
	a.addTargetInfo(nil, "")
	a.appendTarget(&pg.Node{Node: &pg.Node_FuncCall{FuncCall: cnt}})
	a.p.slots[i].count = c
}

func cloneNodes(ns []*pg.Node) []*pg.Node {
	out := make([]*pg.Node, len(ns))
	for i, n := range ns {
		out[i] = cloneNode(n)
	}
	return out
}

func cloneNode(n *pg.Node) *pg.Node {
	if n == nil {
		return nil
	}
	return proto.Clone(n).(*pg.Node)
}

// intConst returns the value of an integer constant node.
func intConst(n *pg.Node) (int64, bool) {
	c := n.GetAConst()
	if c == nil || c.GetIval() == nil {
		return 0, false
	}
	return int64(c.GetIval().GetIval()), true
}

// bareName returns the name of an unqualified column reference.
func bareName(n *pg.Node) (string, bool) {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.GetFields()) != 1 {
		return "", false
	}
	s := cr.GetFields()[0].GetString_()
	if s == nil {
		return "", false
	}
	return s.GetSval(), true
}

// The aggregates the merge combines, by name.
var supportedAggs = map[string]aggKind{
	"count": aggCount, "sum": aggSum, "min": aggMin, "max": aggMax, "avg": aggAvg,
	"bool_and": aggBoolAnd, "every": aggBoolAnd, "bool_or": aggBoolOr,
}

// otherAggs are PostgreSQL's other built-in aggregates.
var otherAggs = map[string]bool{
	"array_agg": true, "string_agg": true, "json_agg": true, "jsonb_agg": true, "json_agg_strict": true,
	"jsonb_agg_strict": true, "json_object_agg": true, "jsonb_object_agg": true, "json_object_agg_strict": true,
	"jsonb_object_agg_strict": true, "json_object_agg_unique": true, "jsonb_object_agg_unique": true,
	"json_object_agg_unique_strict": true, "jsonb_object_agg_unique_strict": true, "xmlagg": true,
	"bit_and": true, "bit_or": true, "bit_xor": true, "stddev": true, "stddev_pop": true, "stddev_samp": true,
	"variance": true, "var_pop": true, "var_samp": true, "corr": true, "covar_pop": true, "covar_samp": true,
	"regr_avgx": true, "regr_avgy": true, "regr_count": true, "regr_intercept": true, "regr_r2": true,
	"regr_slope": true, "regr_sxx": true, "regr_sxy": true, "regr_syy": true, "mode": true,
	"percentile_cont": true, "percentile_disc": true, "range_agg": true, "range_intersect_agg": true,
	"multirange_agg": true, "any_value": true, "rank": true, "dense_rank": true, "percent_rank": true, "cume_dist": true,
}

// aggName returns the lower-case name of a call to a built-in aggregate
// (unqualified or in pg_catalog), and whether the call is an aggregate at
// all: a call with aggregate syntax (*, DISTINCT, ORDER BY, FILTER, WITHIN
// GROUP) is one whatever its name.
func aggName(fc *pg.FuncCall) (string, bool) {
	names := fc.GetFuncname()
	if len(names) == 0 {
		return "", false
	}
	name := strings.ToLower(names[len(names)-1].GetString_().GetSval())
	builtin := len(names) == 1 || len(names) == 2 && names[0].GetString_().GetSval() == "pg_catalog"
	syntax := fc.GetAggStar() || fc.GetAggDistinct() || len(fc.GetAggOrder()) > 0 || fc.GetAggFilter() != nil || fc.GetAggWithinGroup()
	if builtin {
		if _, ok := supportedAggs[name]; ok {
			return name, true
		}
		if otherAggs[name] {
			return name, true
		}
	}
	if syntax {
		return strings.ToLower(funcDisplayName(fc)), true
	}
	return "", false
}

func funcDisplayName(fc *pg.FuncCall) string {
	var parts []string
	for _, n := range fc.GetFuncname() {
		parts = append(parts, n.GetString_().GetSval())
	}
	return strings.Join(parts, ".")
}

// classify returns the slot for a target-list expression: an aggregate
// the merge combines, or a plain value. It refuses other aggregates and
// aggregates nested in expressions.
func classify(n *pg.Node) (slot, error) {
	if fc := n.GetFuncCall(); fc != nil && fc.GetOver() == nil {
		if name, ok := aggName(fc); ok {
			kind, supported := supportedAggs[name]
			switch {
			case !supported:
				return slot{}, refuse("", "aggregate %s() across shards is not supported", name)
			case fc.GetAggDistinct():
				return slot{}, refuse("", "aggregate %s(DISTINCT ...) across shards is not supported", name)
			case fc.GetAggWithinGroup():
				return slot{}, refuse("", "aggregate %s() WITHIN GROUP across shards is not supported", name)
			}
			for _, arg := range fc.GetArgs() {
				if containsAgg(arg) {
					return slot{}, refuse("", "nested aggregates across shards are not supported")
				}
				if kind == aggMin || kind == aggMax {
					if err := checkCollations(arg, name+"()"); err != nil {
						return slot{}, err
					}
				}
			}
			return slot{kind: slotAgg, agg: kind}, nil
		}
	}
	if containsAgg(n) || containsNode(n, isAggNode) {
		d, _ := deparseExpr(n)
		return slot{}, refuse("select the aggregate itself and compute the expression in the application",
			"aggregate inside an expression (%s) across shards is not supported", d)
	}
	return slot{kind: slotPlain}, nil
}

// isAggNode reports nodes that are aggregates without being FuncCalls.
func isAggNode(m protoreflect.Message) bool {
	switch m.Interface().(type) {
	case *pg.GroupingFunc, *pg.JsonArrayAgg, *pg.JsonObjectAgg:
		return true
	}
	return false
}

// containsAgg reports whether an expression calls an aggregate of this
// query level (subqueries are their own level).
func containsAgg(n *pg.Node) bool {
	return containsNode(n, func(m protoreflect.Message) bool {
		fc, ok := m.Interface().(*pg.FuncCall)
		if !ok || fc.GetOver() != nil {
			return false
		}
		_, agg := aggName(fc)
		return agg
	})
}

// checkWindows refuses window functions at this query level.
func checkWindows(n *pg.Node) error {
	var name string
	found := containsNode(n, func(m protoreflect.Message) bool {
		if fc, ok := m.Interface().(*pg.FuncCall); ok && fc.GetOver() != nil {
			name = funcDisplayName(fc)
			return true
		}
		return false
	})
	if found {
		return refuse("", "window function %s() across shards is not supported", name)
	}
	return nil
}

// containsNode reports whether pred holds for a message in n's tree,
// without entering subqueries (SubLink's subselect).
func containsNode(n *pg.Node, pred func(protoreflect.Message) bool) bool {
	if n == nil {
		return false
	}
	return walkMsg(n.ProtoReflect(), pred)
}

func walkMsg(m protoreflect.Message, pred func(protoreflect.Message) bool) bool {
	if !m.IsValid() {
		return false
	}
	if pred(m) {
		return true
	}
	if sl, ok := m.Interface().(*pg.SubLink); ok {
		return containsNode(sl.GetTestexpr(), pred)
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len() && !found; i++ {
				found = walkMsg(l.Get(i).Message(), pred)
			}
		} else if !fd.IsMap() {
			found = walkMsg(v.Message(), pred)
		}
		return !found
	})
	return found
}

// normalize returns a copy of n with every location cleared, for
// comparing expressions structurally.
func normalize(n *pg.Node) *pg.Node {
	c := proto.Clone(n).(*pg.Node)
	clearLocations(c.ProtoReflect())
	return c
}

func clearLocations(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Name() == "location" && fd.Kind() == protoreflect.Int32Kind:
			m.Clear(fd)
		case fd.Kind() != protoreflect.MessageKind:
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				clearLocations(l.Get(i).Message())
			}
		case !fd.IsMap():
			clearLocations(v.Message())
		}
		return true
	})
}

// figureColname is the name the server gives an unnamed output column
// (FigureColname), for the cases a bare ORDER BY name can refer to.
func figureColname(n *pg.Node) string {
	if name := colname(n); name != "" {
		return name
	}
	return "?column?"
}

func colname(n *pg.Node) string {
	switch {
	case n.GetColumnRef() != nil:
		f := n.GetColumnRef().GetFields()
		if len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case n.GetAIndirection() != nil:
		ind := n.GetAIndirection().GetIndirection()
		for i := len(ind) - 1; i >= 0; i-- {
			if s := ind[i].GetString_(); s != nil {
				return s.GetSval()
			}
		}
		return colname(n.GetAIndirection().GetArg())
	case n.GetFuncCall() != nil:
		f := n.GetFuncCall().GetFuncname()
		if len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case n.GetTypeCast() != nil:
		if name := colname(n.GetTypeCast().GetArg()); name != "" {
			return name
		}
		tn := n.GetTypeCast().GetTypeName().GetNames()
		if len(tn) > 0 {
			return tn[len(tn)-1].GetString_().GetSval()
		}
	case n.GetCollateClause() != nil:
		return colname(n.GetCollateClause().GetArg())
	case n.GetCoalesceExpr() != nil:
		return "coalesce"
	case n.GetMinMaxExpr() != nil:
		if n.GetMinMaxExpr().GetOp() == pg.MinMaxOp_IS_GREATEST {
			return "greatest"
		}
		return "least"
	case n.GetCaseExpr() != nil:
		return "case"
	case n.GetAArrayExpr() != nil:
		return "array"
	case n.GetRowExpr() != nil:
		return "row"
	case n.GetAExpr() != nil && n.GetAExpr().GetKind() == pg.A_Expr_Kind_AEXPR_NULLIF:
		return "nullif"
	case n.GetSubLink() != nil:
		switch n.GetSubLink().GetSubLinkType() {
		case pg.SubLinkType_EXISTS_SUBLINK:
			return "exists"
		case pg.SubLinkType_ARRAY_SUBLINK:
			return "array"
		case pg.SubLinkType_EXPR_SUBLINK:
			if s := n.GetSubLink().GetSubselect().GetSelectStmt(); s != nil && len(s.GetTargetList()) > 0 {
				rt := s.GetTargetList()[0].GetResTarget()
				if rt.GetName() != "" {
					return rt.GetName()
				}
				return colname(rt.GetVal())
			}
		}
	case n.GetSqlvalueFunction() != nil:
		return sqlValueFunctionName(n.GetSqlvalueFunction().GetOp())
	}
	return ""
}

func sqlValueFunctionName(op pg.SQLValueFunctionOp) string {
	switch op {
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_DATE:
		return "current_date"
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_TIME, pg.SQLValueFunctionOp_SVFOP_CURRENT_TIME_N:
		return "current_time"
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_TIMESTAMP, pg.SQLValueFunctionOp_SVFOP_CURRENT_TIMESTAMP_N:
		return "current_timestamp"
	case pg.SQLValueFunctionOp_SVFOP_LOCALTIME, pg.SQLValueFunctionOp_SVFOP_LOCALTIME_N:
		return "localtime"
	case pg.SQLValueFunctionOp_SVFOP_LOCALTIMESTAMP, pg.SQLValueFunctionOp_SVFOP_LOCALTIMESTAMP_N:
		return "localtimestamp"
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_ROLE:
		return "current_role"
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_USER:
		return "current_user"
	case pg.SQLValueFunctionOp_SVFOP_USER:
		return "user"
	case pg.SQLValueFunctionOp_SVFOP_SESSION_USER:
		return "session_user"
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_CATALOG:
		return "current_catalog"
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_SCHEMA:
		return "current_schema"
	}
	return ""
}

// deparseExpr renders an expression for a message.
func deparseExpr(n *pg.Node) (string, error) {
	sel := &pg.SelectStmt{TargetList: []*pg.Node{pg.MakeResTargetNodeWithVal(cloneNode(n), -1)}}
	tree := &pg.ParseResult{Version: parserVersion(), Stmts: []*pg.RawStmt{{Stmt: &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: sel}}}}}
	s, err := pg.Deparse(tree)
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(s, "SELECT "), nil
}

// parserVersion is the parse-tree version Deparse expects.
var parserVersion = sync.OnceValue(func() int32 {
	tree, err := pg.Parse("SELECT")
	if err != nil {
		return 0
	}
	return tree.GetVersion()
})

// bounds reads LIMIT and OFFSET.
func (a *analyzer) bounds() error {
	sel, p := a.sel, a.p
	var err error
	if p.limit, err = parseBound(sel.GetLimitCount(), "LIMIT"); err != nil {
		return err
	}
	if p.offset, err = parseBound(sel.GetLimitOffset(), "OFFSET"); err != nil {
		return err
	}
	if p.offset.set && p.offset.param < 0 && p.offset.val == 0 {
		p.offset.set = false
	}
	p.withTies = sel.GetLimitOption() == pg.LimitOption_LIMIT_OPTION_WITH_TIES
	return nil
}

// parseBound reads a LIMIT or OFFSET expression: a constant, NULL (LIMIT
// ALL) or a parameter, possibly cast.
func parseBound(n *pg.Node, clause string) (bound, error) {
	b := bound{param: -1}
	if n == nil {
		return b, nil
	}
	for n.GetTypeCast() != nil {
		n = n.GetTypeCast().GetArg()
	}
	switch {
	case n.GetParamRef() != nil:
		b.set = true
		b.param = int(n.GetParamRef().GetNumber()) - 1
		if b.param < 0 {
			return b, errShardsFail
		}
		return b, nil
	case n.GetAConst() != nil:
		c := n.GetAConst()
		if c.GetIsnull() {
			return b, nil
		}
		var text string
		switch {
		case c.GetIval() != nil:
			b.set, b.val = true, int64(c.GetIval().GetIval())
		case c.GetFval() != nil:
			text = c.GetFval().GetFval()
		case c.GetSval() != nil:
			text = strings.TrimSpace(c.GetSval().GetSval())
		default:
			return b, errShardsFail
		}
		if text != "" {
			v, ok := roundToInt64([]byte(text))
			if !ok {
				return b, errShardsFail
			}
			b.set, b.val = true, v
		}
		if b.val < 0 {
			return b, errShardsFail // "LIMIT must not be negative" from every shard
		}
		return b, nil
	}
	d, _ := deparseExpr(n)
	return b, refuse("use a constant or a parameter ($n)", "%s %s across shards is not supported", clause, d)
}

// roundToInt64 reads an integer or decimal text and rounds it half away
// from zero, as the cast from numeric to bigint does.
func roundToInt64(s []byte) (int64, bool) {
	if v, err := strconv.ParseInt(string(s), 10, 64); err == nil {
		return v, true
	}
	d, err := parseDecimal(s)
	if err != nil || d.special != decFinite {
		return 0, false
	}
	var q, r big.Int
	q.QuoRem(&d.v, pow10(d.scale), &r)
	r.Abs(&r)
	r.Lsh(&r, 1)
	if r.Cmp(pow10(d.scale)) >= 0 {
		if d.v.Sign() < 0 {
			q.Sub(&q, big.NewInt(1))
		} else {
			q.Add(&q, big.NewInt(1))
		}
	}
	if !q.IsInt64() {
		return 0, false
	}
	return q.Int64(), true
}

// rewriteLimit rewrites the shard statement's LIMIT and OFFSET. When rows
// are streamed (no grouping), each shard is asked for limit + offset rows
// and no offset; when groups are merged, the shards return everything.
// Parameters stay referenced, cast to bigint as LIMIT and OFFSET cast them,
// so that the server infers the same parameter types as for the client's
// text.
func (a *analyzer) rewriteLimit() {
	sel, p := a.sel, a.p
	count, off := sel.GetLimitCount(), sel.GetLimitOffset()
	if !p.limit.set && !p.offset.set && (count == nil || p.limit.param < 0) && (off == nil || p.offset.param < 0) {
		// Nothing to push down; LIMIT ALL and OFFSET 0/NULL are no-ops.
		sel.LimitCount, sel.LimitOffset = nil, nil
		sel.LimitOption = pg.LimitOption_LIMIT_OPTION_DEFAULT
		return
	}
	keep := func(n *pg.Node, b bound) *pg.Node {
		if b.param < 0 {
			return nil
		}
		x := castBigint(n)
		return &pg.Node{Node: &pg.Node_AExpr{AExpr: &pg.A_Expr{
			Kind: pg.A_Expr_Kind_AEXPR_NULLIF, Name: []*pg.Node{pg.MakeStrNode("=")},
			Lexpr: x, Rexpr: cloneNode(x), Location: -1,
		}}}
	}
	if p.agg {
		sel.LimitCount = keep(count, p.limit)
		sel.LimitOffset = keep(off, p.offset)
		sel.LimitOption = pg.LimitOption_LIMIT_OPTION_DEFAULT
		if sel.LimitCount != nil {
			sel.LimitOption = pg.LimitOption_LIMIT_OPTION_COUNT
		}
		return
	}
	switch {
	case !p.limit.set:
		// No limit: only the offset goes, kept referenced if a parameter.
		sel.LimitOffset = keep(off, p.offset)
	case !p.offset.set:
		sel.LimitOffset = keep(off, p.offset)
	case p.limit.param < 0 && p.offset.param < 0:
		sel.LimitOffset = nil
		if sum := p.limit.val + p.offset.val; sum >= p.limit.val {
			sel.LimitCount = intConstNode(sum)
		} else {
			sel.LimitCount = nil // past bigint: no limit on the shards
			sel.LimitOption = pg.LimitOption_LIMIT_OPTION_DEFAULT
		}
	default:
		sel.LimitCount = &pg.Node{Node: &pg.Node_AExpr{AExpr: &pg.A_Expr{
			Kind: pg.A_Expr_Kind_AEXPR_OP, Name: []*pg.Node{pg.MakeStrNode("+")},
			Lexpr: castBigint(count), Rexpr: castBigint(off), Location: -1,
		}}}
		sel.LimitOffset = nil
	}
}

// intConstNode returns the constant n as the parser would: an integer
// when it fits in 32 bits, a numeric literal otherwise.
func intConstNode(n int64) *pg.Node {
	if n == int64(int32(n)) {
		return pg.MakeAConstIntNode(n, -1)
	}
	return &pg.Node{Node: &pg.Node_AConst{AConst: &pg.A_Const{
		Val:      &pg.A_Const_Fval{Fval: &pg.Float{Fval: strconv.FormatInt(n, 10)}},
		Location: -1,
	}}}
}

// castBigint returns n::bigint.
func castBigint(n *pg.Node) *pg.Node {
	return &pg.Node{Node: &pg.Node_TypeCast{TypeCast: &pg.TypeCast{
		Arg: cloneNode(n),
		TypeName: &pg.TypeName{
			Names:   []*pg.Node{pg.MakeStrNode("pg_catalog"), pg.MakeStrNode("int8")},
			Typemod: -1, Location: -1,
		},
		Location: -1,
	}}}
}

// setOp plans a UNION [ALL] at the top. INTERSECT and EXCEPT, and a
// UNION (which removes duplicates) under a UNION ALL, need rows of
// several shards together and are refused; so are arms that aggregate,
// limit or remove duplicates on their own where that is not subsumed.
func (a *analyzer) setOp() error {
	sel, p := a.sel, a.p
	a.inSetOp = true
	p.distinct = sel.GetOp() == pg.SetOperation_SETOP_UNION && !sel.GetAll()
	if err := checkSetTree(sel, p.distinct, true); err != nil {
		return err
	}
	left := sel
	for isSetOp(left) {
		left = left.GetLarg()
	}
	for i, n := range left.GetTargetList() {
		rt := n.GetResTarget()
		if isStar(rt.GetVal()) {
			p.slots = append(p.slots, slot{kind: slotStar})
			a.addTargetInfo(nil, "")
			p.stars++
			if p.firstStar < 0 {
				p.firstStar = i
			}
			p.lastStar = i
			continue
		}
		name := rt.GetName()
		if name == "" {
			name = figureColname(rt.GetVal())
		}
		p.slots = append(p.slots, slot{kind: slotPlain})
		// Only names and positions refer to a set operation's columns.
		a.addTargetInfo(nil, name)
		a.exprs[len(a.exprs)-1] = &pg.Node{} // matches no ORDER BY expression
	}
	p.nTargets = len(p.slots)
	for _, n := range sel.GetSortClause() {
		sb := n.GetSortBy()
		if name, ok := bareName(sb.GetNode()); ok {
			found := false
			for i := 0; i < p.nTargets; i++ {
				found = found || a.names[i] == name && p.slots[i].kind != slotStar
			}
			if !found {
				return refuse("order by output column names or positions",
					"ORDER BY %s over a UNION across shards is not supported", name)
			}
		}
	}
	if err := a.sortClause(); err != nil {
		return err
	}
	if len(sel.GetLockingClause()) > 0 && (sel.GetLimitCount() != nil || sel.GetLimitOffset() != nil) {
		return refuse("", "FOR UPDATE or FOR SHARE with LIMIT or OFFSET across shards is not supported")
	}
	if err := a.bounds(); err != nil {
		return err
	}
	if !p.distinct && len(p.order) == 0 && !p.limit.set && !p.offset.set {
		a.p = nil // UNION ALL: concatenation is exact
	}
	return nil
}

// checkSetTree validates a set-operation tree: top says sel is the
// statement itself (whose ORDER BY and LIMIT the merge handles), dedup
// that a UNION above removes duplicates anyway.
func checkSetTree(sel *pg.SelectStmt, dedup, top bool) error {
	if !isSetOp(sel) {
		return checkArm(sel, dedup)
	}
	switch sel.GetOp() {
	case pg.SetOperation_SETOP_INTERSECT:
		return refuse("", "INTERSECT across shards is not supported")
	case pg.SetOperation_SETOP_EXCEPT:
		return refuse("", "EXCEPT across shards is not supported")
	}
	if !sel.GetAll() && !dedup {
		return refuse("", "UNION under UNION ALL across shards is not supported")
	}
	if !top && (len(sel.GetSortClause()) > 0 || sel.GetLimitCount() != nil || sel.GetLimitOffset() != nil) {
		return refuse("", "ORDER BY, LIMIT or OFFSET inside a UNION across shards is not supported")
	}
	d := dedup || !sel.GetAll()
	if err := checkSetTree(sel.GetLarg(), d, false); err != nil {
		return err
	}
	return checkSetTree(sel.GetRarg(), d, false)
}

// checkArm refuses a UNION arm whose rows depend on other shards' rows.
func checkArm(sel *pg.SelectStmt, dedup bool) error {
	if len(sel.GetWindowClause()) > 0 {
		return refuse("", "window functions across shards are not supported")
	}
	if sel.GetLimitCount() != nil || sel.GetLimitOffset() != nil {
		return refuse("", "LIMIT or OFFSET inside a UNION across shards is not supported")
	}
	if len(sel.GetGroupClause()) > 0 || sel.GetHavingClause() != nil {
		return refuse("", "GROUP BY inside a UNION across shards is not supported")
	}
	if len(sel.GetDistinctClause()) > 0 && !dedup {
		return refuse("", "DISTINCT inside a UNION ALL across shards is not supported")
	}
	for _, n := range sel.GetTargetList() {
		val := n.GetResTarget().GetVal()
		if err := checkWindows(val); err != nil {
			return err
		}
		if containsAgg(val) {
			return refuse("", "aggregates inside a UNION across shards are not supported")
		}
	}
	return nil
}

// String describes the plan for logs: its kinds and the shard statement.
func (p *Plan) String() string {
	return fmt.Sprintf("merge %s: %s", strings.Join(p.kinds, "+"), p.shardSQL)
}
