package proxy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/brownie/brownie-sidecar/internal/lru"
)

// Pin reasons: session state that cannot follow a client from one upstream
// connection to another in transaction pooling.
const (
	PinListen       = "listen"
	PinAdvisoryLock = "advisory_lock"
	PinTempTable    = "temp_table"
	PinHoldCursor   = "cursor_with_hold"
	PinSQLPrepare   = "sql_prepare"
	PinSetConfig    = "set_config"
	PinSessionMode  = "session_mode" // not a reason to report: session pooling pins everything
)

// pinFeature names the SQL feature behind a pin reason in error messages.
var pinFeature = map[string]string{
	PinListen:       "LISTEN",
	PinAdvisoryLock: "session-level advisory locks",
	PinTempTable:    "temporary tables",
	PinHoldCursor:   "cursors WITH HOLD",
	PinSQLPrepare:   "SQL-level PREPARE, EXECUTE and DEALLOCATE",
	PinSetConfig:    "set_config() with a non-constant setting name",
}

// analysis is what the sidecar must know about one statement text (one
// Query message, possibly several statements, or one Parse). Immutable.
type analysis struct {
	pin      string   // a pin reason, or ""
	setNames []string // settings changed with SET (not SET LOCAL) or set_config(..., false)
	reset    []string // settings RESET (to the client's session default)
	resetAll bool     // RESET ALL, DISCARD ALL
	discard  bool     // DISCARD ALL or DEALLOCATE ALL: server-side statements are gone
}

// touchesState reports whether the session settings must be read back after
// the statement's transaction.
func (a *analysis) touchesState() bool {
	return len(a.setNames) > 0 || len(a.reset) > 0 || a.resetAll || a.discard
}

var noAnalysis = &analysis{}

// keywords that any statement changing session state or needing a pin
// contains; texts without any of them skip the parser (pgbench -S, most
// application SELECTs).
var stateKeywords = []string{"set", "listen", "prepare", "execute", "deallocate", "declare", "temp", "advisory", "discard", "into"}

// analyzer parses statement texts with the real Postgres parser, caching
// results by text in a bounded LRU. Safe for concurrent use.
type analyzer struct {
	cache *lru.Cache[string, *analysis]
}

func newAnalyzer(max int) *analyzer {
	return &analyzer{cache: lru.New[string, *analysis](max)}
}

// analyze returns the analysis of text. A text the parser rejects gets no
// special treatment: the server will report the syntax error itself.
func (z *analyzer) analyze(text string) *analysis {
	if !mayTouchState(text) {
		return noAnalysis
	}
	if a, ok := z.cache.Get(text); ok {
		return a
	}
	return z.cache.Add(text, parseAnalysis(text))
}

func mayTouchState(text string) bool {
	for i := 0; i < len(text); i++ {
		c := text[i] | 0x20
		for _, k := range stateKeywords {
			if c == k[0] && len(text)-i >= len(k) && strings.EqualFold(text[i:i+len(k)], k) {
				return true
			}
		}
	}
	return false
}

func parseAnalysis(text string) *analysis {
	tree, err := pg_query.Parse(text)
	if err != nil {
		return noAnalysis
	}
	a := &analysis{}
	for _, raw := range tree.GetStmts() {
		a.statement(raw.GetStmt())
	}
	if !a.touchesState() && a.pin == "" {
		return noAnalysis
	}
	return a
}

func (a *analysis) pinFor(reason string) {
	if a.pin == "" {
		a.pin = reason
	}
}

func (a *analysis) statement(n *pg_query.Node) {
	switch {
	case n.GetVariableSetStmt() != nil:
		v := n.GetVariableSetStmt()
		if v.GetIsLocal() {
			return
		}
		name := strings.ToLower(v.GetName())
		switch v.GetKind() {
		case pg_query.VariableSetKind_VAR_SET_VALUE, pg_query.VariableSetKind_VAR_SET_CURRENT:
			a.setNames = append(a.setNames, name)
		case pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_RESET:
			a.reset = append(a.reset, name)
		case pg_query.VariableSetKind_VAR_RESET_ALL:
			a.resetAll = true
		case pg_query.VariableSetKind_VAR_SET_MULTI:
			if name == "session characteristics" {
				a.setNames = append(a.setNames, "default_transaction_isolation",
					"default_transaction_read_only", "default_transaction_deferrable")
			}
		}
		return
	case n.GetListenStmt() != nil:
		a.pinFor(PinListen)
	case n.GetPrepareStmt() != nil, n.GetExecuteStmt() != nil:
		a.pinFor(PinSQLPrepare)
	case n.GetDeallocateStmt() != nil:
		a.pinFor(PinSQLPrepare)
		if n.GetDeallocateStmt().GetIsall() {
			a.discard = true
		}
	case n.GetDeclareCursorStmt() != nil:
		if n.GetDeclareCursorStmt().GetOptions()&0x0020 != 0 { // CURSOR_OPT_HOLD
			a.pinFor(PinHoldCursor)
		}
	case n.GetDiscardStmt() != nil:
		if n.GetDiscardStmt().GetTarget() == pg_query.DiscardMode_DISCARD_ALL {
			a.resetAll, a.discard = true, true
		}
	}
	a.walk(n.ProtoReflect())
}

// walk looks through a statement for temporary relations and calls to
// functions that change session state.
func (a *analysis) walk(m protoreflect.Message) {
	switch v := m.Interface().(type) {
	case *pg_query.RangeVar:
		if v.GetRelpersistence() == "t" {
			a.pinFor(PinTempTable)
		}
	case *pg_query.FuncCall:
		a.funcCall(v)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := val.List()
			if fd.Kind() == protoreflect.MessageKind {
				for i := 0; i < l.Len(); i++ {
					a.walk(l.Get(i).Message())
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			a.walk(val.Message())
		}
		return true
	})
}

func (a *analysis) funcCall(f *pg_query.FuncCall) {
	names := f.GetFuncname()
	if len(names) == 0 {
		return
	}
	name := strings.ToLower(names[len(names)-1].GetString_().GetSval())
	switch name {
	case "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared":
		a.pinFor(PinAdvisoryLock)
	case "set_config":
		args := f.GetArgs()
		if len(args) != 3 {
			return
		}
		if local := args[2].GetAConst(); local != nil && local.GetBoolval() != nil && local.GetBoolval().GetBoolval() {
			return // transaction-local
		}
		if c := args[0].GetAConst(); c != nil && c.GetSval() != nil {
			a.setNames = append(a.setNames, strings.ToLower(c.GetSval().GetSval()))
			return
		}
		a.pinFor(PinSetConfig)
	}
}
