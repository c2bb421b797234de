package router

import (
	"errors"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/sqltree"
)

// NowSetting is the transaction-local setting that holds the time every
// shard uses for now() in writes to replicated tables (see PinTime).
const NowSetting = "brownie.now"

// Column is one column of a table as the catalog describes it: its name
// and its default expression (pg_get_expr), "" when it has none.
type Column struct {
	Name    string
	Default string
}

// PinTime rewrites a write to replicated tables so that every shard stores
// the same values. Run on several shards, now() would be each shard's own
// transaction start, so each copy of a row would differ:
//
//   - calls of now(), CURRENT_TIMESTAMP, transaction_timestamp(),
//     statement_timestamp(), clock_timestamp(), LOCALTIMESTAMP,
//     CURRENT_DATE, CURRENT_TIME and LOCALTIME read the transaction-local
//     setting brownie.now instead (the caller sets it on every shard);
//   - an INSERT gets the columns it leaves to a default that calls them,
//     with that value, and DEFAULT in INSERT or UPDATE names the same
//     pinned value.
//
// columns returns a table's columns in order, ok false when it is unknown.
// A default that calls any other function (nextval, gen_random_uuid,
// random…) cannot be pinned: an INSERT leaving such a column to its
// default, or setting it to DEFAULT, is refused with 0A000. Statements that
// are not INSERT, UPDATE, DELETE, MERGE or SELECT are returned unchanged
// (a schema change keeps its now() defaults). changed reports whether the
// text was rewritten; the rewritten text keeps every $n parameter.
func PinTime(sql string, columns func(table string) ([]Column, bool)) (out string, changed bool, err error) {
	tree, err := pg.Parse(sql)
	if err != nil {
		return sql, false, nil // the server reports the syntax error
	}
	p := &pinner{columns: columns}
	for _, raw := range tree.GetStmts() {
		n := raw.GetStmt()
		switch {
		case n.GetInsertStmt() != nil:
			if err := p.insert(n.GetInsertStmt()); err != nil {
				return "", false, err
			}
		case n.GetUpdateStmt() != nil:
			if err := p.update(n.GetUpdateStmt()); err != nil {
				return "", false, err
			}
		case n.GetDeleteStmt() != nil, n.GetMergeStmt() != nil, n.GetSelectStmt() != nil:
		default:
			continue
		}
		p.walk(n.ProtoReflect())
	}
	if !p.changed {
		return sql, false, nil
	}
	out, err = sqltree.Print(tree)
	if errors.Is(err, sqltree.ErrParamZero) {
		// Left as written: the server reports the statement's error.
		return sql, false, nil
	}
	if err != nil {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "cannot pin the current time in this write to replicated tables")
		e.Detail = "Every shard must store the same time, so the sidecar rewrites now() and its kin in such writes, and it could not rewrite this statement (" + err.Error() + ")."
		e.Hint = "pass the time as a parameter or a literal"
		return "", false, e
	}
	return out, true, nil
}

type pinner struct {
	columns func(string) ([]Column, bool)
	changed bool
}

// timeFuncs are the current-time functions (no arguments) and the type
// of their result.
var timeFuncs = map[string]string{
	"now": "timestamptz", "transaction_timestamp": "timestamptz", "statement_timestamp": "timestamptz",
	"clock_timestamp": "timestamptz",
}

// pinned returns the expression that replaces a current-time call of type
// typ: current_setting('brownie.now')::timestamptz, cast further when typ
// is not timestamptz.
func pinned(typ string) *pg.Node {
	setting := pg.MakeFuncCallNode([]*pg.Node{pg.MakeStrNode("current_setting")},
		[]*pg.Node{pg.MakeAConstStrNode(NowSetting, -1)}, -1)
	n := typeCast(setting, "timestamptz")
	if typ != "timestamptz" {
		n = typeCast(n, typ)
	}
	return n
}

func typeCast(arg *pg.Node, typ string) *pg.Node {
	return &pg.Node{Node: &pg.Node_TypeCast{TypeCast: &pg.TypeCast{Arg: arg, TypeName: typeName(typ), Location: -1}}}
}

func typeName(name string) *pg.TypeName {
	return &pg.TypeName{Names: []*pg.Node{pg.MakeStrNode("pg_catalog"), pg.MakeStrNode(name)}, Typemod: -1}
}

// timeCall reports whether n is a current-time call, and its type.
func timeCall(n *pg.Node) (string, bool) {
	if f := n.GetFuncCall(); f != nil && len(f.GetArgs()) == 0 && !f.GetAggStar() && f.GetOver() == nil {
		names := f.GetFuncname()
		if len(names) == 1 || (len(names) == 2 && names[0].GetString_().GetSval() == "pg_catalog") {
			typ, ok := timeFuncs[names[len(names)-1].GetString_().GetSval()]
			return typ, ok
		}
	}
	if v := n.GetSqlvalueFunction(); v != nil {
		switch v.GetOp() {
		case pg.SQLValueFunctionOp_SVFOP_CURRENT_TIMESTAMP, pg.SQLValueFunctionOp_SVFOP_CURRENT_TIMESTAMP_N:
			return "timestamptz", true
		case pg.SQLValueFunctionOp_SVFOP_LOCALTIMESTAMP, pg.SQLValueFunctionOp_SVFOP_LOCALTIMESTAMP_N:
			return "timestamp", true
		case pg.SQLValueFunctionOp_SVFOP_CURRENT_DATE:
			return "date", true
		case pg.SQLValueFunctionOp_SVFOP_CURRENT_TIME, pg.SQLValueFunctionOp_SVFOP_CURRENT_TIME_N:
			return "timetz", true
		case pg.SQLValueFunctionOp_SVFOP_LOCALTIME, pg.SQLValueFunctionOp_SVFOP_LOCALTIME_N:
			return "time", true
		}
	}
	return "", false
}

// walk replaces every current-time call under m.
func (p *pinner) walk(m protoreflect.Message) {
	if n, ok := m.Interface().(*pg.Node); ok {
		if typ, ok := timeCall(n); ok {
			n.Node = pinned(typ).Node
			p.changed = true
			return
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				p.walk(l.Get(i).Message())
			}
		case fd.IsMap():
		case fd.Kind() == protoreflect.MessageKind:
			p.walk(v.Message())
		}
		return true
	})
}

// defaultExpr returns the pinned form of column c's default: nil when it
// has none (NULL), an error when it calls a function that cannot be
// pinned.
func (p *pinner) defaultExpr(table string, c Column) (*pg.Node, error) {
	if c.Default == "" {
		return nil, nil
	}
	tree, err := pg.Parse("SELECT " + c.Default)
	if err != nil || len(tree.GetStmts()) != 1 {
		return nil, pgerr.Errorf(pgerr.InternalError, "cannot read the default of column %s.%s: %s", table, c.Name, c.Default)
	}
	expr := tree.GetStmts()[0].GetStmt().GetSelectStmt().GetTargetList()[0].GetResTarget().GetVal()
	var bad string
	var check func(m protoreflect.Message)
	check = func(m protoreflect.Message) {
		if n, ok := m.Interface().(*pg.Node); ok {
			if _, ok := timeCall(n); ok {
				return
			}
			if f := n.GetFuncCall(); f != nil && bad == "" {
				names := f.GetFuncname()
				bad = names[len(names)-1].GetString_().GetSval()
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := 0; i < v.List().Len(); i++ {
					check(v.List().Get(i).Message())
				}
			case fd.IsMap():
			case fd.Kind() == protoreflect.MessageKind:
				check(v.Message())
			}
			return true
		})
	}
	check(expr.ProtoReflect())
	if bad != "" {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "column %s of replicated table %s defaults to %s, which each shard would evaluate differently", c.Name, table, c.Default)
		e.Hint = "supply the column's value in the statement (" + bad + "() runs on every shard separately)"
		return nil, e
	}
	p.walk(expr.ProtoReflect())
	return expr, nil
}

// tableName returns the name of the relation as written (schema.table or
// table).
func tableName(r *pg.RangeVar) string {
	if r.GetSchemaname() != "" {
		return r.GetSchemaname() + "." + r.GetRelname()
	}
	return r.GetRelname()
}

// insert adds the columns an INSERT leaves to time-dependent defaults, and
// pins DEFAULT items.
func (p *pinner) insert(ins *pg.InsertStmt) error {
	table := tableName(ins.GetRelation())
	cols, ok := p.columns(table)
	if !ok {
		return nil // not a table the caller knows: the server reports it
	}
	byName := map[string]Column{}
	for _, c := range cols {
		byName[c.Name] = c
	}
	sel := ins.GetSelectStmt().GetSelectStmt()
	var named []string
	for _, t := range ins.GetCols() {
		named = append(named, t.GetResTarget().GetName())
	}
	if len(named) == 0 {
		// No column list: the values fill the columns in order.
		width := len(cols)
		switch {
		case sel == nil:
			width = 0 // DEFAULT VALUES
		case len(sel.GetValuesLists()) > 0:
			width = len(sel.GetValuesLists()[0].GetList().GetItems())
		case len(sel.GetTargetList()) > 0:
			width = len(sel.GetTargetList())
		}
		for _, c := range cols[:min(width, len(cols))] {
			named = append(named, c.Name)
			ins.Cols = append(ins.Cols, &pg.Node{Node: &pg.Node_ResTarget{ResTarget: &pg.ResTarget{Name: c.Name}}})
		}
	}
	// DEFAULT items in VALUES.
	if sel != nil {
		for _, row := range sel.GetValuesLists() {
			for i, item := range row.GetList().GetItems() {
				if item.GetSetToDefault() == nil || i >= len(named) {
					continue
				}
				expr, err := p.defaultExpr(table, byName[named[i]])
				if err != nil {
					return err
				}
				if p.changedBy(expr) {
					row.GetList().Items[i] = expr
					p.changed = true
				}
			}
		}
	}
	// Columns left out.
	var extra []*pg.Node
	for _, c := range cols {
		if c.Default == "" || contains(named, c.Name) {
			continue
		}
		expr, err := p.defaultExpr(table, c)
		if err != nil {
			return err
		}
		if !p.changedBy(expr) {
			continue // a constant default: the same on every shard
		}
		ins.Cols = append(ins.Cols, &pg.Node{Node: &pg.Node_ResTarget{ResTarget: &pg.ResTarget{Name: c.Name}}})
		extra = append(extra, expr)
	}
	if len(extra) == 0 {
		return nil
	}
	p.changed = true
	switch {
	case sel == nil: // DEFAULT VALUES
		ins.SelectStmt = &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: &pg.SelectStmt{
			ValuesLists: []*pg.Node{pg.MakeListNode(extra)}, Op: pg.SetOperation_SETOP_NONE, LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT}}}
	case len(sel.GetValuesLists()) > 0:
		for _, row := range sel.GetValuesLists() {
			l := row.GetList()
			l.Items = append(l.Items, extra...)
		}
	case sel.GetOp() == pg.SetOperation_SETOP_NONE && len(sel.GetTargetList()) > 0:
		for _, e := range extra {
			sel.TargetList = append(sel.TargetList, &pg.Node{Node: &pg.Node_ResTarget{ResTarget: &pg.ResTarget{Val: e}}})
		}
	default:
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "INSERT into replicated table %s from a set operation leaves time-dependent defaults to each shard", table)
		e.Hint = "list every column with a time-dependent default in the INSERT"
		return e
	}
	return nil
}

// changedBy reports whether a pinned default depends on the time (it was
// rewritten): constant defaults need not be added.
func (p *pinner) changedBy(expr *pg.Node) bool {
	if expr == nil {
		return false
	}
	found := false
	var look func(m protoreflect.Message)
	look = func(m protoreflect.Message) {
		if f, ok := m.Interface().(*pg.FuncCall); ok {
			names := f.GetFuncname()
			if len(names) == 1 && names[0].GetString_().GetSval() == "current_setting" {
				found = true
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := 0; i < v.List().Len(); i++ {
					look(v.List().Get(i).Message())
				}
			case fd.IsMap():
			case fd.Kind() == protoreflect.MessageKind:
				look(v.Message())
			}
			return true
		})
	}
	look(expr.ProtoReflect())
	return found
}

// update pins SET column = DEFAULT.
func (p *pinner) update(up *pg.UpdateStmt) error {
	table := tableName(up.GetRelation())
	var cols []Column
	loaded := false
	for _, t := range up.GetTargetList() {
		rt := t.GetResTarget()
		if rt.GetVal().GetSetToDefault() == nil {
			continue
		}
		if !loaded {
			var ok bool
			if cols, ok = p.columns(table); !ok {
				return nil
			}
			loaded = true
		}
		for _, c := range cols {
			if c.Name != rt.GetName() {
				continue
			}
			expr, err := p.defaultExpr(table, c)
			if err != nil {
				return err
			}
			if expr == nil {
				expr = &pg.Node{Node: &pg.Node_AConst{AConst: &pg.A_Const{Isnull: true}}}
			}
			rt.Val = expr
			p.changed = true
		}
	}
	return nil
}

func contains(names []string, name string) bool {
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}
