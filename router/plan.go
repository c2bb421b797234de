package router

import (
	"errors"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// StmtPlan is the compiled routing analysis of one statement text (one
// Parse, or one simple Query with any number of statements): which tables
// it touches, whether it only reads, and for each sharded table where its
// keys come from — literals, or Bind parameters $n with their casts. It is
// computed once per text and map (Router.Plan caches it) and is immutable
// and safe for concurrent use. A plan belongs to the shard map it was
// compiled for; get it from Router.Plan at each execution (a cache hit) to
// follow map reloads.
type StmtPlan struct {
	c        *compiled
	parseErr error // *pgerr.Error 42601, or nil

	readOnly bool
	// txFree: every statement is a plain SELECT (no INTO, no locking
	// clause) calling no function but those in txFreeFuncs, so at READ
	// COMMITTED its answer does not depend on the transaction it runs in,
	// nor does it act on it (Decision.TxFree).
	txFree   bool
	ddl      bool // a schema change or similar: runs on every shard
	refs     []*tableRef
	repl     []tableUse // replicated tables (and unlisted ones under UnlistedReplicated)
	unlisted []tableUse // tables not in the map (UnlistedReject)
	tables   []string   // every table named, for explanations

	// guard holds every value compared with a key column anywhere
	// (also under OR and NOT, in INSERT rows and UPDATE assignments): the
	// tenant guard checks them all against brownie.team_id.
	guard []valueRef

	setHints []setHint // SET brownie.* / set_config('brownie.*', ...)
	hintErr  error     // an invalid SET brownie.* statement

	// copyInto is the sharded table of a COPY … FROM: its rows are split
	// by their keys (Decision.Copy).
	copyInto *tableRef
	// apart names two sharded tables of one query level that are not
	// joined on their key columns: spanning shards, the join would miss
	// the pairs whose rows live on different shards.
	apart []string
}

// tableUse is one use of a non-sharded table.
type tableUse struct {
	name  string
	write bool
}

// tableRef is one reference to a sharded table in the statement, with the
// constraint its rows satisfy.
type tableRef struct {
	t      *Table
	name   string // as named in the statement (schema-qualified if not public)
	write  bool
	insert bool
	cons   *cons // nil: unrestricted
	// UPDATE ... SET key = value: rows also end up under these keys.
	assign        []valueRef
	assignUnknown bool
}

// cons is a constraint on a sharded table reference's key: its rows have
// one of the leaf's values, or satisfy all (AND) or any (OR) children.
type cons struct {
	op   consOp
	vals []valueRef
	kids []*cons
}

type consOp uint8

const (
	opLeaf consOp = iota
	opAnd
	opOr
)

func and(a, b *cons) *cons {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.op == opAnd:
		return &cons{op: opAnd, kids: append(append([]*cons(nil), a.kids...), b)}
	}
	return &cons{op: opAnd, kids: []*cons{a, b}}
}

// valueRef is where one key value comes from.
type valueRef struct {
	kind  vkind
	key   Key   // vKey
	err   error // vKey: the literal is not a valid key
	param int   // vParam, vParamArray: 0-based Bind parameter index
	cast  uint32
	// nullRows: a NULL here stands for rows whose key is NULL (IS NULL, an
	// INSERTed or assigned NULL); in a comparison NULL matches nothing.
	nullRows bool
}

type vkind uint8

const (
	vKey        vkind = iota // a literal
	vNull                    // NULL
	vParam                   // a scalar parameter; cast is the innermost cast's type, or 0
	vParamArray              // an array parameter; cast is the element type from a T[] cast, or 0
)

// setHint is a routing hint set by the statement itself.
type setHint struct {
	h     Hint
	param int // >= 0: the value is this parameter (set_config with $n)
}

// compilePlan parses text and builds its plan. It never fails: a text the
// parser rejects gets a plan whose parseErr is set.
func compilePlan(c *compiled, text string) *StmtPlan {
	p := &StmtPlan{c: c, readOnly: true}
	tree, err := pg.Parse(text)
	if err != nil {
		p.parseErr = pgerr.Errorf(CodeSyntaxError, "%s", err.Error())
		p.readOnly = false
		return p
	}
	b := &builder{c: c, p: p}
	p.txFree = len(tree.GetStmts()) > 0
	for _, raw := range tree.GetStmts() {
		b.top(raw.GetStmt())
		sel := raw.GetStmt().GetSelectStmt()
		if sel == nil || sel.GetIntoClause() != nil || len(sel.GetLockingClause()) > 0 {
			p.txFree = false
		}
	}
	p.txFree = p.txFree && p.readOnly && !b.tied
	return p
}

type builder struct {
	c    *compiled
	p    *StmtPlan
	ctes []string // CTE names in scope
	tied bool     // a function ties the statement to its transaction (see txFreeFuncs)
}

// scope is the FROM list of one query level.
type scope struct {
	parent  *scope
	entries []*entry
}

// entry is one FROM item: a table, a CTE, a subquery or function.
type entry struct {
	sc      *scope
	refname string // alias, or table name
	schema  string // for schema.table.column (unaliased tables only)
	relname string // "" unless an unaliased table
	ref     *tableRef
}

// qual is a boolean condition of a query level and the table references
// it restricts (nil: all of the level's).
type qual struct {
	expr        *pg.Node
	restrict    map[*tableRef]bool
	using       []string
	left, right []*entry
}

type edge struct{ from, to *tableRef }

func (b *builder) top(n *pg.Node) {
	switch {
	case n == nil:
	case n.GetSelectStmt() != nil:
		b.selectStmt(n.GetSelectStmt(), nil)
		b.setConfig(n.GetSelectStmt())
	case n.GetInsertStmt() != nil, n.GetUpdateStmt() != nil, n.GetDeleteStmt() != nil, n.GetMergeStmt() != nil:
		b.dml(n, nil)
	case n.GetExplainStmt() != nil:
		b.top(n.GetExplainStmt().GetQuery())
	case n.GetCopyStmt() != nil:
		cp := n.GetCopyStmt()
		if cp.GetQuery() != nil {
			b.top(cp.GetQuery())
			return
		}
		if cp.GetIsFrom() {
			b.p.readOnly = false
		}
		if cp.GetRelation() != nil {
			e := b.rangeVar(cp.GetRelation(), &scope{}, cp.GetIsFrom(), cp.GetIsFrom())
			if e != nil && e.ref != nil && cp.GetIsFrom() && len(b.p.refs) == 1 {
				b.p.copyInto, b.p.refs = e.ref, nil
			}
		}
	case n.GetDeclareCursorStmt() != nil:
		b.top(n.GetDeclareCursorStmt().GetQuery())
	case n.GetPrepareStmt() != nil:
		b.top(n.GetPrepareStmt().GetQuery())
		b.p.readOnly = false
	case n.GetCreateTableAsStmt() != nil:
		b.top(n.GetCreateTableAsStmt().GetQuery())
		b.p.readOnly, b.p.ddl = false, true
	case n.GetVariableSetStmt() != nil:
		b.p.readOnly = false
		b.setStmt(n.GetVariableSetStmt())
	case n.GetDiscardStmt() != nil:
		b.p.readOnly = false
		if n.GetDiscardStmt().GetTarget() == pg.DiscardMode_DISCARD_ALL {
			b.p.setHints = append(b.p.setHints, setHint{h: Hint{Name: HintAll, Reset: true}, param: -1})
		}
	case n.GetVariableShowStmt() != nil:
		// Read-only, no table.
	case n.GetTransactionStmt() != nil, n.GetListenStmt() != nil, n.GetUnlistenStmt() != nil,
		n.GetNotifyStmt() != nil, n.GetDeallocateStmt() != nil, n.GetFetchStmt() != nil,
		n.GetClosePortalStmt() != nil, n.GetExecuteStmt() != nil, n.GetCallStmt() != nil,
		n.GetDoStmt() != nil, n.GetLoadStmt() != nil, n.GetCheckPointStmt() != nil,
		n.GetConstraintsSetStmt() != nil, n.GetLockStmt() != nil:
		// Session and transaction control: no table to route by; they go
		// where the session's transaction is.
		b.p.readOnly = false
	default:
		// Schema changes, GRANT, TRUNCATE, VACUUM...: every shard.
		b.p.readOnly, b.p.ddl = false, true
	}
}

// dml analyses a statement that may appear in a WITH clause.
func (b *builder) dml(n *pg.Node, outer *scope) {
	switch {
	case n.GetSelectStmt() != nil:
		b.selectStmt(n.GetSelectStmt(), outer)
	case n.GetInsertStmt() != nil:
		b.p.readOnly = false
		b.insertStmt(n.GetInsertStmt(), outer)
	case n.GetUpdateStmt() != nil:
		b.p.readOnly = false
		b.updateStmt(n.GetUpdateStmt(), outer)
	case n.GetDeleteStmt() != nil:
		b.p.readOnly = false
		b.deleteStmt(n.GetDeleteStmt(), outer)
	case n.GetMergeStmt() != nil:
		b.p.readOnly = false
		b.mergeStmt(n.GetMergeStmt(), outer)
	default:
		b.walk(n, outer)
	}
}

// with analyses a WITH clause's queries and brings the CTE names into
// scope; the returned function takes them out again.
func (b *builder) with(w *pg.WithClause, outer *scope) func() {
	n := len(b.ctes)
	if w == nil {
		return func() {}
	}
	ctes := w.GetCtes()
	if w.GetRecursive() {
		for _, c := range ctes {
			b.ctes = append(b.ctes, c.GetCommonTableExpr().GetCtename())
		}
	}
	for _, c := range ctes {
		cte := c.GetCommonTableExpr()
		b.dml(cte.GetCtequery(), outer)
		if !w.GetRecursive() {
			b.ctes = append(b.ctes, cte.GetCtename())
		}
	}
	return func() { b.ctes = b.ctes[:n] }
}

func (b *builder) isCTE(name string) bool {
	for i := len(b.ctes) - 1; i >= 0; i-- {
		if b.ctes[i] == name {
			return true
		}
	}
	return false
}

func (b *builder) selectStmt(sel *pg.SelectStmt, outer *scope) {
	if sel == nil {
		return
	}
	defer b.with(sel.GetWithClause(), outer)()
	if len(sel.GetLockingClause()) > 0 {
		b.p.readOnly = false
	}
	if sel.GetIntoClause() != nil {
		b.p.readOnly, b.p.ddl = false, true
	}
	if sel.GetOp() != pg.SetOperation_SETOP_NONE && sel.GetOp() != pg.SetOperation_SET_OPERATION_UNDEFINED {
		b.selectStmt(sel.GetLarg(), outer)
		b.selectStmt(sel.GetRarg(), outer)
		b.walkAll(outer, sel.GetSortClause(), []*pg.Node{sel.GetLimitCount(), sel.GetLimitOffset()})
		return
	}
	sc := &scope{parent: outer}
	var quals []qual
	for _, f := range sel.GetFromClause() {
		b.fromItem(f, sc, &quals)
	}
	quals = append(quals, qual{expr: sel.GetWhereClause()})
	b.level(sc, quals)
	b.walkAll(sc, sel.GetTargetList(), []*pg.Node{sel.GetHavingClause(), sel.GetLimitCount(), sel.GetLimitOffset()},
		sel.GetGroupClause(), sel.GetSortClause(), sel.GetWindowClause(), sel.GetDistinctClause(), sel.GetValuesLists())
}

func (b *builder) insertStmt(ins *pg.InsertStmt, outer *scope) {
	defer b.with(ins.GetWithClause(), outer)()
	sc := &scope{parent: outer}
	e := b.rangeVar(ins.GetRelation(), sc, true, true)
	src := ins.GetSelectStmt().GetSelectStmt()
	if e != nil && e.ref != nil {
		col := -1
		for i, c := range ins.GetCols() {
			rt := c.GetResTarget()
			if rt.GetName() == e.ref.t.KeyColumn && len(rt.GetIndirection()) == 0 {
				col = i
			}
		}
		if col >= 0 && src != nil && len(src.GetValuesLists()) > 0 && len(src.GetFromClause()) == 0 {
			leaf := &cons{op: opLeaf}
			for _, row := range src.GetValuesLists() {
				items := row.GetList().GetItems()
				if col >= len(items) {
					leaf = nil
					break
				}
				v, ok := b.value(items[col])
				if !ok {
					leaf = nil
					break
				}
				leaf.vals = append(leaf.vals, v)
			}
			if leaf != nil {
				for i := range leaf.vals {
					leaf.vals[i].nullRows = true
				}
				b.p.guard = append(b.p.guard, leaf.vals...)
			}
			e.ref.cons = leaf
		}
	}
	if e != nil && e.ref != nil {
		// ON CONFLICT DO UPDATE SET key = …: the row may change teams.
		b.assignments(e.ref, ins.GetOnConflictClause().GetTargetList())
	}
	b.selectStmt(src, outer)
	b.walkAll(sc, ins.GetReturningList())
	if oc := ins.GetOnConflictClause(); oc != nil {
		b.walkMsg(oc.ProtoReflect(), sc)
	}
}

func (b *builder) updateStmt(u *pg.UpdateStmt, outer *scope) {
	defer b.with(u.GetWithClause(), outer)()
	sc := &scope{parent: outer}
	e := b.rangeVar(u.GetRelation(), sc, true, false)
	var quals []qual
	for _, f := range u.GetFromClause() {
		b.fromItem(f, sc, &quals)
	}
	quals = append(quals, qual{expr: u.GetWhereClause()})
	b.level(sc, quals)
	if e != nil && e.ref != nil {
		b.assignments(e.ref, u.GetTargetList())
	}
	b.walkAll(sc, u.GetTargetList(), u.GetReturningList())
}

// isSameKey reports whether an assigned value is the key column itself
// (SET team_id = team_id) or the proposed row's (EXCLUDED.team_id in ON
// CONFLICT DO UPDATE, whose row is on this shard already).
func isSameKey(n *pg.Node, col string) bool {
	f := n.GetColumnRef().GetFields()
	switch len(f) {
	case 1:
		return f[0].GetString_().GetSval() == col
	case 2:
		return f[1].GetString_().GetSval() == col && f[0].GetString_().GetSval() == "excluded"
	}
	return false
}

// assignments records SET key = value in an UPDATE (or ON CONFLICT DO
// UPDATE): the rows also end up under that key, so its shard joins the
// target set; a value the router cannot read leaves the table keyless.
func (b *builder) assignments(ref *tableRef, targets []*pg.Node) {
	for _, t := range targets {
		rt := t.GetResTarget()
		if rt.GetName() != ref.t.KeyColumn {
			continue
		}
		if isSameKey(rt.GetVal(), ref.t.KeyColumn) {
			continue
		}
		if v, ok := b.value(rt.GetVal()); ok && len(rt.GetIndirection()) == 0 {
			v.nullRows = true
			ref.assign = append(ref.assign, v)
			b.p.guard = append(b.p.guard, v)
		} else {
			ref.assignUnknown = true
		}
	}
}

func (b *builder) deleteStmt(d *pg.DeleteStmt, outer *scope) {
	defer b.with(d.GetWithClause(), outer)()
	sc := &scope{parent: outer}
	b.rangeVar(d.GetRelation(), sc, true, false)
	var quals []qual
	for _, f := range d.GetUsingClause() {
		b.fromItem(f, sc, &quals)
	}
	quals = append(quals, qual{expr: d.GetWhereClause()})
	b.level(sc, quals)
	b.walkAll(sc, d.GetReturningList())
}

// mergeStmt: the target is written without a usable key (its join
// condition is not analysed); the source is read.
func (b *builder) mergeStmt(m *pg.MergeStmt, outer *scope) {
	defer b.with(m.GetWithClause(), outer)()
	sc := &scope{parent: outer}
	b.rangeVar(m.GetRelation(), sc, true, true)
	var quals []qual
	b.fromItem(m.GetSourceRelation(), sc, &quals)
	b.level(sc, quals)
	b.walkAll(sc, m.GetMergeWhenClauses(), []*pg.Node{m.GetJoinCondition()}, m.GetReturningList())
}

// fromItem adds a FROM item's entries to sc and returns them; join
// conditions go to quals.
func (b *builder) fromItem(n *pg.Node, sc *scope, quals *[]qual) []*entry {
	switch {
	case n == nil:
		return nil
	case n.GetRangeVar() != nil:
		if e := b.rangeVar(n.GetRangeVar(), sc, false, false); e != nil {
			return []*entry{e}
		}
		return nil
	case n.GetJoinExpr() != nil:
		j := n.GetJoinExpr()
		l := b.fromItem(j.GetLarg(), sc, quals)
		r := b.fromItem(j.GetRarg(), sc, quals)
		var restrict map[*tableRef]bool
		switch j.GetJointype() {
		case pg.JoinType_JOIN_INNER:
			restrict = refSet(l, r)
		case pg.JoinType_JOIN_LEFT:
			restrict = refSet(r)
		case pg.JoinType_JOIN_RIGHT:
			restrict = refSet(l)
		default:
			restrict = map[*tableRef]bool{}
		}
		if j.GetQuals() != nil {
			*quals = append(*quals, qual{expr: j.GetQuals(), restrict: restrict})
		}
		if len(j.GetUsingClause()) > 0 {
			var cols []string
			for _, c := range j.GetUsingClause() {
				cols = append(cols, c.GetString_().GetSval())
			}
			*quals = append(*quals, qual{using: cols, left: l, right: r, restrict: restrict})
		}
		all := append(l, r...)
		if a := j.GetAlias(); a != nil {
			e := &entry{sc: sc, refname: a.GetAliasname()}
			sc.entries = append(sc.entries, e)
		}
		return all
	case n.GetRangeSubselect() != nil:
		rs := n.GetRangeSubselect()
		b.dml(rs.GetSubquery(), sc)
		e := &entry{sc: sc, refname: rs.GetAlias().GetAliasname()}
		sc.entries = append(sc.entries, e)
		return []*entry{e}
	case n.GetRangeTableSample() != nil:
		ts := n.GetRangeTableSample()
		es := b.fromItem(ts.GetRelation(), sc, quals)
		b.walkAll(sc, ts.GetArgs(), []*pg.Node{ts.GetRepeatable()})
		return es
	case n.GetRangeFunction() != nil:
		rf := n.GetRangeFunction()
		b.walkAll(sc, rf.GetFunctions())
		e := &entry{sc: sc, refname: rf.GetAlias().GetAliasname()}
		sc.entries = append(sc.entries, e)
		return []*entry{e}
	default:
		b.walk(n, sc)
		e := &entry{sc: sc}
		sc.entries = append(sc.entries, e)
		return []*entry{e}
	}
}

func refSet(groups ...[]*entry) map[*tableRef]bool {
	m := map[*tableRef]bool{}
	for _, g := range groups {
		for _, e := range g {
			if e.ref != nil {
				m[e.ref] = true
			}
		}
	}
	return m
}

// rangeVar resolves a table name, records its use and adds its entry to
// sc.
func (b *builder) rangeVar(rv *pg.RangeVar, sc *scope, write, insert bool) *entry {
	if rv == nil {
		return nil
	}
	schema, name := rv.GetSchemaname(), rv.GetRelname()
	e := &entry{sc: sc, refname: name}
	if a := rv.GetAlias(); a != nil {
		e.refname = a.GetAliasname()
	} else {
		e.schema, e.relname = schema, name
	}
	sc.entries = append(sc.entries, e)
	if schema == "" && b.isCTE(name) {
		return e
	}
	display := name
	if schema != "" && schema != "public" {
		display = schema + "." + name
	}
	t := b.c.table(schema, name)
	if t == nil && isCatalog(schema, name) {
		return e
	}
	b.p.tables = append(b.p.tables, display)
	switch {
	case t == nil && b.c.m.Unlisted == UnlistedReplicated, t != nil && t.Class == Replicated:
		b.p.repl = append(b.p.repl, tableUse{name: display, write: write})
	case t == nil:
		b.p.unlisted = append(b.p.unlisted, tableUse{name: display, write: write})
	default:
		e.ref = &tableRef{t: t, name: display, write: write, insert: insert}
		b.p.refs = append(b.p.refs, e.ref)
	}
	return e
}

// isCatalog reports whether a table name not in the map is a system
// catalog or session-local (temporary) relation, readable on any shard.
func isCatalog(schema, name string) bool {
	switch schema {
	case "pg_catalog", "information_schema", "pg_temp", "pg_toast":
		return true
	case "":
		return strings.HasPrefix(name, "pg_")
	}
	return strings.HasPrefix(schema, "pg_temp_")
}

// level finishes a query level once its FROM list is known: it computes
// the constraints of its tables, then analyses the subqueries of its
// conditions, which may refer to those tables' constraints.
func (b *builder) level(sc *scope, quals []qual) {
	b.constrain(sc, quals)
	for _, q := range quals {
		b.walk(q.expr, sc)
	}
}

// constrain computes the key constraint of every sharded table reference
// of one query level from its WHERE and join conditions, then lets
// key-column equalities (a.team_id = b.team_id, USING (team_id)) carry
// constraints from one table to another.
func (b *builder) constrain(sc *scope, quals []qual) {
	own := map[*tableRef]*cons{}
	var edges []edge
	joined := map[*tableRef]*tableRef{} // union-find of key-joined references
	var find func(r *tableRef) *tableRef
	find = func(r *tableRef) *tableRef {
		if p, ok := joined[r]; ok && p != r {
			root := find(p)
			joined[r] = root
			return root
		}
		return r
	}
	join := func(x, y *tableRef) { joined[find(x)] = find(y) }
	for _, q := range quals {
		can := func(r *tableRef) bool { return q.restrict == nil || q.restrict[r] }
		if q.using != nil {
			for _, col := range q.using {
				for _, l := range q.left {
					for _, r := range q.right {
						if l.ref == nil || r.ref == nil || l.ref.t.KeyColumn != col || r.ref.t.KeyColumn != col {
							continue
						}
						join(l.ref, r.ref)
						if can(r.ref) {
							edges = append(edges, edge{l.ref, r.ref})
						}
						if can(l.ref) {
							edges = append(edges, edge{r.ref, l.ref})
						}
					}
				}
			}
			continue
		}
		if q.expr == nil {
			continue
		}
		var eqs []edge
		for r, c := range b.boolCons(q.expr, sc, true, &eqs) {
			if can(r) {
				own[r] = and(own[r], c)
			}
		}
		for _, e := range eqs {
			join(e.from, e.to)
			if can(e.to) {
				edges = append(edges, e)
			}
			if can(e.from) {
				edges = append(edges, edge{e.to, e.from})
			}
		}
	}
	var first *tableRef
	for _, e := range sc.entries {
		r := e.ref
		if r == nil || r.insert {
			continue
		}
		if first == nil {
			first = r
		} else if find(r) != find(first) && b.p.apart == nil {
			b.p.apart = []string{first.name, r.name}
		}
		// Every reference whose constraint flows into r through equalities.
		seen := map[*tableRef]bool{r: true}
		queue := []*tableRef{r}
		var c *cons
		for len(queue) > 0 {
			x := queue[0]
			queue = queue[1:]
			c = and(c, own[x])
			for _, ed := range edges {
				if ed.to == x && !seen[ed.from] {
					seen[ed.from] = true
					queue = append(queue, ed.from)
				}
			}
		}
		r.cons = c
	}
}

// boolCons returns, for each sharded table reference of sc, the constraint
// its key satisfies whenever n is true. At the top level (not under OR or
// NOT) it also reports key-column equalities between references.
func (b *builder) boolCons(n *pg.Node, sc *scope, top bool, eqs *[]edge) map[*tableRef]*cons {
	switch {
	case n == nil:
		return nil
	case n.GetBoolExpr() != nil:
		be := n.GetBoolExpr()
		switch be.GetBoolop() {
		case pg.BoolExprType_AND_EXPR:
			out := map[*tableRef]*cons{}
			for _, a := range be.GetArgs() {
				for r, c := range b.boolCons(a, sc, top, eqs) {
					out[r] = and(out[r], c)
				}
			}
			return out
		case pg.BoolExprType_OR_EXPR:
			var out map[*tableRef]*cons
			for i, a := range be.GetArgs() {
				m := b.boolCons(a, sc, false, nil)
				if i == 0 {
					out = map[*tableRef]*cons{}
					for r, c := range m {
						out[r] = &cons{op: opOr, kids: []*cons{c}}
					}
					continue
				}
				for r, c := range out {
					if k, ok := m[r]; ok {
						c.kids = append(c.kids, k)
					} else {
						delete(out, r)
					}
				}
			}
			return out
		case pg.BoolExprType_NOT_EXPR:
			for _, a := range be.GetArgs() {
				b.boolCons(a, sc, false, nil) // for the guard's values only
			}
		}
		return nil
	case n.GetNullTest() != nil:
		nt := n.GetNullTest()
		if nt.GetNulltesttype() != pg.NullTestType_IS_NULL {
			return nil
		}
		refs, _ := b.keyCol(nt.GetArg(), sc)
		return b.leaf(refs, valueRef{kind: vNull, nullRows: true})
	case n.GetAExpr() != nil:
		return b.aExpr(n.GetAExpr(), sc, top, eqs)
	}
	return nil
}

func (b *builder) leaf(refs []*tableRef, vals ...valueRef) map[*tableRef]*cons {
	if len(refs) == 0 {
		return nil
	}
	b.p.guard = append(b.p.guard, vals...)
	out := make(map[*tableRef]*cons, len(refs))
	for _, r := range refs {
		out[r] = &cons{op: opLeaf, vals: vals}
	}
	return out
}

// consFor gives every ref the constraint c (of an enclosing level's table
// whose key the refs' keys equal), or nothing when c is nil.
func consFor(refs []*tableRef, c *cons) map[*tableRef]*cons {
	if c == nil {
		return nil
	}
	out := make(map[*tableRef]*cons, len(refs))
	for _, r := range refs {
		out[r] = c
	}
	return out
}

func isEqOp(names []*pg.Node) bool {
	switch len(names) {
	case 1:
		return names[0].GetString_().GetSval() == "="
	case 2:
		return names[0].GetString_().GetSval() == "pg_catalog" && names[1].GetString_().GetSval() == "="
	}
	return false
}

func (b *builder) aExpr(a *pg.A_Expr, sc *scope, top bool, eqs *[]edge) map[*tableRef]*cons {
	if !isEqOp(a.GetName()) {
		return nil
	}
	switch a.GetKind() {
	case pg.A_Expr_Kind_AEXPR_OP:
		l, lOuter := b.keyCol(a.GetLexpr(), sc)
		r, rOuter := b.keyCol(a.GetRexpr(), sc)
		switch {
		case l != nil && rOuter != nil:
			return consFor(l, rOuter.cons)
		case r != nil && lOuter != nil:
			return consFor(r, lOuter.cons)
		case l != nil && r != nil:
			if top && eqs != nil {
				for _, x := range l {
					for _, y := range r {
						if x != y {
							*eqs = append(*eqs, edge{x, y})
						}
					}
				}
			}
			return nil
		case l != nil:
			if v, ok := b.value(a.GetRexpr()); ok {
				return b.leaf(l, v)
			}
		case r != nil:
			if v, ok := b.value(a.GetLexpr()); ok {
				return b.leaf(r, v)
			}
		}
	case pg.A_Expr_Kind_AEXPR_IN:
		refs, _ := b.keyCol(a.GetLexpr(), sc)
		if refs == nil {
			return nil
		}
		var vals []valueRef
		for _, item := range a.GetRexpr().GetList().GetItems() {
			v, ok := b.value(item)
			if !ok {
				return nil
			}
			vals = append(vals, v)
		}
		if len(vals) == 0 {
			return nil
		}
		return b.leaf(refs, vals...)
	case pg.A_Expr_Kind_AEXPR_OP_ANY:
		refs, _ := b.keyCol(a.GetLexpr(), sc)
		if refs == nil {
			return nil
		}
		if vals, ok := b.arrayValue(a.GetRexpr()); ok {
			return b.leaf(refs, vals...)
		}
	}
	return nil
}

// keyCol resolves a column reference to the sharded table references of
// sc whose key column it names. Unqualified names are looked up in sc only
// (an outer table's column cannot be told from an unknown column of an
// inner FROM item). Qualified names are looked up outwards; a match in an
// enclosing level is returned as outer (a correlated reference), and
// shadows any table further out.
func (b *builder) keyCol(n *pg.Node, sc *scope) (refs []*tableRef, outer *tableRef) {
	cr := n.GetColumnRef()
	if cr == nil {
		return nil, nil
	}
	f := cr.GetFields()
	names := make([]string, len(f))
	for i, x := range f {
		if x.GetString_() == nil {
			return nil, nil // A_Star
		}
		names[i] = x.GetString_().GetSval()
	}
	switch len(names) {
	case 1:
		for _, e := range sc.entries {
			if e.ref != nil && e.ref.t.KeyColumn == names[0] {
				refs = append(refs, e.ref)
			}
		}
		return refs, nil
	case 2, 3:
		col := names[len(names)-1]
		for s := sc; s != nil; s = s.parent {
			for _, e := range s.entries {
				match := false
				if len(names) == 2 {
					match = e.refname == names[0]
				} else {
					match = e.relname != "" && e.relname == names[1] && (e.schema == names[0] || e.schema == "" && names[0] == "public")
				}
				if !match {
					continue
				}
				if e.ref == nil || e.ref.t.KeyColumn != col {
					return nil, nil
				}
				if s != sc {
					return nil, e.ref
				}
				return []*tableRef{e.ref}, nil
			}
		}
	}
	return nil, nil
}

// value returns where a scalar key value comes from: a literal (possibly
// cast), NULL, or a parameter (possibly cast).
func (b *builder) value(n *pg.Node) (valueRef, bool) {
	kt := b.c.m.KeyType
	switch {
	case n == nil:
	case n.GetAConst() != nil:
		return b.literal(n.GetAConst(), 0)
	case n.GetParamRef() != nil:
		num := int(n.GetParamRef().GetNumber())
		if num < 1 {
			return valueRef{}, false
		}
		return valueRef{kind: vParam, param: num - 1}, true
	case n.GetTypeCast() != nil:
		tc := n.GetTypeCast()
		if len(tc.GetTypeName().GetArrayBounds()) > 0 {
			return valueRef{}, false
		}
		oid := typeOIDByName(lastName(tc.GetTypeName().GetNames()))
		if oid == 0 {
			return valueRef{}, false
		}
		if c := tc.GetArg().GetAConst(); c != nil {
			return b.literal(c, oid)
		}
		v, ok := b.value(tc.GetArg())
		if !ok {
			return v, false
		}
		if v.kind == vParam && v.cast == 0 {
			v.cast = oid
		}
		if v.kind == vKey && v.err == nil {
			// A cast of a cast literal: re-check it converts.
			k, err := decodeKey([]byte(v.key.String()), false, oid, kt)
			if err != nil {
				return valueRef{kind: vKey, err: err}, true
			}
			v.key = k
		}
		return v, true
	}
	return valueRef{}, false
}

// literal converts a constant (typed by a cast, or untyped) to a key.
func (b *builder) literal(c *pg.A_Const, oid uint32) (valueRef, bool) {
	kt := b.c.m.KeyType
	if c.GetIsnull() {
		return valueRef{kind: vNull}, true
	}
	var text string
	switch {
	case c.GetSval() != nil:
		text = c.GetSval().GetSval()
		if oid == 0 {
			oid = oidUnknown
		}
	case c.GetIval() != nil:
		text = strconv.FormatInt(int64(c.GetIval().GetIval()), 10)
		if oid == 0 {
			oid = oidInt8
		}
	case c.GetFval() != nil:
		text = c.GetFval().GetFval()
		if oid == 0 {
			if _, err := strconv.ParseInt(text, 10, 64); err != nil {
				return valueRef{}, false // a numeric: never equal to a key
			}
			oid = oidInt8
		}
	default:
		return valueRef{}, false
	}
	if (oid == oidInt8 || oid == oidInt4 || oid == oidInt2) && kt != KeyBigint && c.GetSval() == nil {
		return valueRef{}, false // an integer compared with a uuid or text column
	}
	k, err := decodeKey([]byte(text), false, oid, kt)
	if err != nil {
		return valueRef{kind: vKey, err: err}, true
	}
	return valueRef{kind: vKey, key: k}, true
}

// arrayValue returns the values of the array in key = ANY(array): an
// array parameter, a literal '{…}' or ARRAY[…].
func (b *builder) arrayValue(n *pg.Node) ([]valueRef, bool) {
	elem := uint32(0)
	if tc := n.GetTypeCast(); tc != nil {
		if len(tc.GetTypeName().GetArrayBounds()) == 0 {
			return nil, false
		}
		if elem = typeOIDByName(lastName(tc.GetTypeName().GetNames())); elem == 0 {
			return nil, false
		}
		n = tc.GetArg()
	}
	switch {
	case n.GetParamRef() != nil:
		num := int(n.GetParamRef().GetNumber())
		if num < 1 {
			return nil, false
		}
		return []valueRef{{kind: vParamArray, param: num - 1, cast: elem}}, true
	case n.GetAConst() != nil && n.GetAConst().GetSval() != nil:
		elems, err := parseArrayText(n.GetAConst().GetSval().GetSval())
		if errors.Is(err, errArrayTooLarge) {
			return nil, false
		}
		if err != nil {
			return []valueRef{{kind: vKey, err: err}}, true
		}
		oid := elem
		if oid == 0 {
			oid = oidUnknown
		}
		out := make([]valueRef, 0, len(elems))
		for _, e := range elems {
			if e.null {
				out = append(out, valueRef{kind: vNull})
				continue
			}
			k, err := decodeKey(e.raw, false, oid, b.c.m.KeyType)
			out = append(out, valueRef{kind: vKey, key: k, err: err})
		}
		return out, len(out) > 0
	case n.GetAArrayExpr() != nil:
		var out []valueRef
		for _, el := range n.GetAArrayExpr().GetElements() {
			v, ok := b.value(el)
			if !ok {
				return nil, false
			}
			if v.kind == vParam && v.cast == 0 {
				v.cast = elem
			}
			out = append(out, v)
		}
		return out, len(out) > 0
	}
	return nil, false
}

func lastName(names []*pg.Node) string {
	if len(names) == 0 {
		return ""
	}
	return strings.ToLower(names[len(names)-1].GetString_().GetSval())
}

// walkAll walks expression lists and single expressions for nested
// queries.
func (b *builder) walkAll(sc *scope, lists ...[]*pg.Node) {
	for _, l := range lists {
		for _, n := range l {
			b.walk(n, sc)
		}
	}
}

// walk finds nested queries (sublinks, subselects) anywhere in an
// expression and analyses them with sc as their enclosing level; it also
// notes functions that cannot run on a replica.
func (b *builder) walk(n *pg.Node, sc *scope) {
	if n == nil {
		return
	}
	b.walkMsg(n.ProtoReflect(), sc)
}

func (b *builder) walkMsg(m protoreflect.Message, sc *scope) {
	if !m.IsValid() {
		return
	}
	switch v := m.Interface().(type) {
	case *pg.SelectStmt:
		b.selectStmt(v, sc)
		return
	case *pg.InsertStmt:
		b.p.readOnly = false
		b.insertStmt(v, sc)
		return
	case *pg.UpdateStmt:
		b.p.readOnly = false
		b.updateStmt(v, sc)
		return
	case *pg.DeleteStmt:
		b.p.readOnly = false
		b.deleteStmt(v, sc)
		return
	case *pg.MergeStmt:
		b.p.readOnly = false
		b.mergeStmt(v, sc)
		return
	case *pg.FuncCall:
		name := lastName(v.GetFuncname())
		if writerFuncs[name] {
			b.p.readOnly = false
		}
		if names := v.GetFuncname(); !txFreeFuncs[name] || len(names) > 2 ||
			(len(names) == 2 && !strings.EqualFold(names[0].GetString_().GetSval(), "pg_catalog")) {
			b.tied = true
		}
	case *pg.SQLValueFunction:
		b.tied = true // CURRENT_TIMESTAMP and the like: the transaction's start, or the session's user
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				l := val.List()
				for i := 0; i < l.Len(); i++ {
					b.walkMsg(l.Get(i).Message(), sc)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			b.walkMsg(val.Message(), sc)
		}
		return true
	})
}

// txFreeFuncs are the built-in functions whose result does not depend on
// the transaction they run in and that do not act on it: aggregates,
// string, number, JSON and array functions. Any other function (now(),
// set_config, advisory locks, sequences, the application's own) ties a
// statement to its transaction.
var txFreeFuncs = map[string]bool{
	"count": true, "sum": true, "avg": true, "min": true, "max": true, "bool_and": true, "bool_or": true,
	"every": true, "array_agg": true, "string_agg": true, "json_agg": true, "jsonb_agg": true,
	"json_object_agg": true, "jsonb_object_agg": true,
	"lower": true, "upper": true, "length": true, "char_length": true, "octet_length": true, "concat": true,
	"concat_ws": true, "substr": true, "substring": true, "trim": true, "btrim": true, "ltrim": true,
	"rtrim": true, "replace": true, "split_part": true, "strpos": true, "position": true, "left": true,
	"right": true, "lpad": true, "rpad": true, "md5": true, "starts_with": true, "initcap": true,
	"abs": true, "round": true, "floor": true, "ceil": true, "ceiling": true, "trunc": true, "mod": true,
	"to_json": true, "to_jsonb": true, "json_build_object": true, "jsonb_build_object": true,
	"json_build_array": true, "jsonb_build_array": true, "jsonb_extract_path": true,
	"jsonb_extract_path_text": true, "json_extract_path": true, "json_extract_path_text": true,
	"jsonb_array_length": true, "json_array_length": true, "jsonb_typeof": true,
	"array_length": true, "cardinality": true, "unnest": true, "array_position": true,
}

// writerFuncs are functions that write (or need a transaction id), so a
// SELECT calling them cannot run on a replica.
var writerFuncs = map[string]bool{
	"nextval": true, "setval": true, "txid_current": true, "pg_current_xact_id": true,
	"pg_advisory_lock": true, "pg_advisory_xact_lock": true, "pg_try_advisory_lock": true,
	"pg_try_advisory_xact_lock": true, "lo_create": true, "lo_import": true, "lo_unlink": true,
	"pg_notify": true,
}
