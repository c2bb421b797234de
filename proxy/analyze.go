package proxy

import (
	"errors"
	"strings"
	"unsafe"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/brownie/brownie-sidecar/internal/lru"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/sqltext"
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

	// tx classifies a text that is exactly one transaction-control
	// statement: BEGIN/START TRANSACTION (txReadOnly with READ ONLY),
	// COMMIT/END, ROLLBACK/ABORT (not savepoints, not AND CHAIN).
	tx         txKind
	txReadOnly bool
	// txSnapshot is true when BEGIN asks for REPEATABLE READ or
	// SERIALIZABLE: the transaction's first statement fixes its snapshot.
	txSnapshot bool
	// savepoint names the savepoint of a SAVEPOINT, RELEASE or ROLLBACK
	// TO statement (tx txSavepoint, txRelease, txRollbackTo).
	savepoint string
	// local is true when every statement only changes the current
	// transaction's settings (SET LOCAL, SET TRANSACTION, set_config(...,
	// true)): a shard joining the transaction later replays them.
	local bool
	// noTxBlock is true for a statement Postgres refuses inside a
	// transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ALTER
	// SYSTEM…): on several shards it runs shard by shard.
	noTxBlock bool
	// twoPhase is true for PREPARE TRANSACTION, COMMIT PREPARED and
	// ROLLBACK PREPARED sent by the client.
	twoPhase bool
	// cursor is true for DECLARE … CURSOR: its FETCHes would read one
	// shard only.
	cursor bool
	// hintsOnly is true when every statement sets or resets a brownie.*
	// routing hint: nothing the server must see before the transaction's
	// first real statement.
	hintsOnly bool
	// noData is true when no statement reads or writes table data (SET,
	// transaction control, DISCARD, LISTEN): such a statement is not a
	// write that read-your-writes must wait for.
	noData bool
	// ddl is true when a statement changes the schema (CREATE, ALTER,
	// DROP…): statements prepared before it may be stale (see
	// Server.schemaGen).
	ddl bool
	// deallocate names the statement of a text that is exactly one
	// DEALLOCATE name; deallocateAll marks DEALLOCATE ALL.
	deallocate    string
	deallocateAll bool
	// discardAll marks a text that is exactly DISCARD ALL.
	discardAll bool
}

// txKind is the transaction-control role of a statement text.
type txKind uint8

const (
	txNone txKind = iota
	txBegin
	txCommit
	txRollback
	txSavepoint
	txRelease
	txRollbackTo
)

// touchesState reports whether the session settings must be read back after
// the statement's transaction.
func (a *analysis) touchesState() bool {
	return len(a.setNames) > 0 || len(a.reset) > 0 || a.resetAll || a.discard
}

// txWords start the transaction-control statements analyze classifies,
// and the statements that change the schema.
var txWords = []string{"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
	"create", "alter", "drop", "comment", "grant", "revoke", "truncate", "reindex", "security", "import"}

// mayStartWithTxWord reports whether a statement of text may start with
// one of txWords: the first word after whitespace, comments and empty
// statements is one, or a semicolon has more text after it (a later
// statement, or a semicolon inside a literal: the parser decides).
func mayStartWithTxWord(text string) bool {
	i := skipToStatement(text, 0)
	j := i
	for j < len(text) && (text[j]|0x20) >= 'a' && (text[j]|0x20) <= 'z' {
		j++
	}
	w := text[i:j]
	for _, k := range txWords {
		if strings.EqualFold(w, k) {
			return true
		}
	}
	for k := j; ; {
		semi := strings.IndexByte(text[k:], ';')
		if semi < 0 {
			return false
		}
		if k = skipToStatement(text, k+semi); k < len(text) {
			return true
		}
	}
}

// skipToStatement returns the offset of the first byte at or after i that
// is not whitespace, a comment or a semicolon: len(text) when there is
// none (an unclosed comment included).
func skipToStatement(text string, i int) int {
	for i = sqltext.SkipSpace(text, i); i < len(text) && text[i] == ';'; i = sqltext.SkipSpace(text, i+1) {
	}
	return i
}

var noAnalysis = &analysis{}

// keywords that any statement changing session state or needing a pin
// contains; texts without any of them skip the parser (pgbench -S, most
// application SELECTs).
var stateKeywords = []string{"set", "listen", "prepare", "execute", "deallocate", "declare", "temp", "advisory", "discard", "into",
	"vacuum", "concurrently", "system", "database", "tablespace", "reindex", "cluster"}

// analyzer parses statement texts with the real Postgres parser, caching
// results by text in a bounded LRU. Safe for concurrent use.
type analyzer struct {
	cache  *lru.Cache[string, *analysis]
	syntax *lru.Cache[string, *pgerr.Error] // by text: its syntax error, or nil
}

func newAnalyzer(max int) *analyzer {
	return &analyzer{cache: lru.New[string, *analysis](max), syntax: lru.New[string, *pgerr.Error](max)}
}

// maxSyntaxChecked bounds the statements syntaxError parses; larger ones
// are left to the server.
const maxSyntaxChecked = 64 << 10

// syntaxError returns the syntax error Postgres reports for text, worded
// and positioned as Postgres words it (the parser is Postgres's own), or
// nil when the text parses or is too large to check here. Errors of the
// parser other than syntax errors (their SQLSTATE is not known here) are
// left to the server. Results are cached by text.
func (z *analyzer) syntaxError(text string) *pgerr.Error {
	if len(text) > maxSyntaxChecked {
		return nil
	}
	if e, ok := z.syntax.Get(text); ok {
		return e
	}
	var found *pgerr.Error
	if _, err := pg_query.Parse(text); err != nil {
		var pe *parser.Error
		if errors.As(err, &pe) && strings.HasPrefix(pe.Message, "syntax error") {
			found = &pgerr.Error{Severity: pgerr.SevError, Code: pgerr.SyntaxError, Message: pe.Message,
				Position: pe.Cursorpos, Routine: pe.Funcname}
		}
	}
	return z.syntax.Add(text, found)
}

// analyze returns the analysis of text. A text the parser rejects gets no
// special treatment: the server will report the syntax error itself.
func (z *analyzer) analyze(text string) *analysis {
	if !mayTouchState(text) && !mayStartWithTxWord(text) {
		return noAnalysis
	}
	if a, ok := z.cache.Get(text); ok {
		return a
	}
	return z.cache.Add(text, parseAnalysis(text))
}

// analyzeBytes is analyze for a message body: it converts the text to a
// string (an allocation) only when the keyword prefilter says the
// statement needs a look.
func (z *analyzer) analyzeBytes(b []byte) *analysis {
	if len(b) == 0 {
		return noAnalysis
	}
	view := unsafe.String(&b[0], len(b)) // read-only, not retained
	if !mayTouchState(view) && !mayStartWithTxWord(view) {
		return noAnalysis
	}
	return z.analyze(string(b))
}

func mayTouchState(text string) bool {
	for i := 0; i+1 < len(text); i++ {
		c := text[i] | 0x20
		seconds := keywordSeconds[c]
		if seconds == 0 {
			continue
		}
		// Most letters start a keyword; far fewer pairs of letters do.
		if d := (text[i+1] | 0x20) - 'a'; d >= 26 || seconds&(1<<d) == 0 {
			continue
		}
		for _, k := range keywordsByFirst[c] {
			if hasFoldedPrefix(text[i:], k) {
				return true
			}
		}
	}
	return false
}

// keywordSeconds holds, for each first letter of stateKeywords (lower
// case), the set of their second letters as bits (1<<0 is 'a').
var keywordSeconds = func() (t [256]uint32) {
	for _, k := range stateKeywords {
		t[k[0]] |= 1 << (k[1] - 'a')
	}
	return t
}()

// hasFoldedPrefix reports whether s starts with k, a lower-case ASCII
// word whose first letter the caller matched, in any letter case. Only
// ASCII letters fold, as in Postgres's keywords (strings.EqualFold would
// also fold some other Unicode letters, and costs a call per candidate).
func hasFoldedPrefix(s, k string) bool {
	if len(s) < len(k) {
		return false
	}
	for j := 1; j < len(k); j++ {
		if s[j]|0x20 != k[j] {
			return false
		}
	}
	return true
}

// keywordsByFirst indexes stateKeywords by their first letter (lower case;
// ASCII letters fold to it with |0x20), so mayTouchState looks at one
// table entry per byte of a statement.
var keywordsByFirst = func() (t [256][]string) {
	for _, k := range stateKeywords {
		t[k[0]] = append(t[k[0]], k)
	}
	return t
}()

func parseAnalysis(text string) *analysis {
	tree, err := pg_query.Parse(text)
	if err != nil {
		return noAnalysis
	}
	a := &analysis{}
	stmts := tree.GetStmts()
	a.hintsOnly = len(stmts) > 0
	a.noData = len(stmts) > 0
	a.local = len(stmts) > 0
	for _, raw := range stmts {
		a.statement(raw.GetStmt())
		if isDDL(raw.GetStmt()) {
			a.ddl = true
		}
		if !isLocalSet(raw.GetStmt()) {
			a.local = false
		}
		if noTxBlock(raw.GetStmt()) {
			a.noTxBlock = true
		}
		switch n := raw.GetStmt(); {
		case n.GetVariableSetStmt() != nil, n.GetTransactionStmt() != nil, n.GetDiscardStmt() != nil,
			n.GetListenStmt() != nil, n.GetUnlistenStmt() != nil:
		default:
			a.noData = false
		}
		v := raw.GetStmt().GetVariableSetStmt()
		if v == nil || !strings.HasPrefix(strings.ToLower(v.GetName()), "brownie.") {
			a.hintsOnly = false
		}
	}
	if len(stmts) == 1 {
		n := stmts[0].GetStmt()
		a.classifyTx(n.GetTransactionStmt())
		if d := n.GetDeallocateStmt(); d != nil {
			a.deallocate, a.deallocateAll = d.GetName(), d.GetIsall()
		}
		a.discardAll = n.GetDiscardStmt() != nil && n.GetDiscardStmt().GetTarget() == pg_query.DiscardMode_DISCARD_ALL
	}
	if !a.touchesState() && a.pin == "" && a.tx == txNone && !a.hintsOnly && !a.noData && !a.local && !a.noTxBlock && !a.twoPhase && !a.cursor && !a.ddl {
		return noAnalysis
	}
	return a
}

// isLocalSet reports whether n only changes the current transaction's
// settings: SET LOCAL, SET TRANSACTION …, or a SELECT of nothing but
// set_config(…, …, true) calls with constant arguments.
func isLocalSet(n *pg_query.Node) bool {
	if v := n.GetVariableSetStmt(); v != nil {
		return v.GetIsLocal() || v.GetKind() == pg_query.VariableSetKind_VAR_SET_MULTI && strings.HasPrefix(strings.ToLower(v.GetName()), "transaction")
	}
	sel := n.GetSelectStmt()
	if sel == nil || len(sel.GetTargetList()) == 0 || len(sel.GetFromClause()) > 0 || sel.GetWhereClause() != nil {
		return false
	}
	for _, t := range sel.GetTargetList() {
		f := t.GetResTarget().GetVal().GetFuncCall()
		if f == nil || len(f.GetFuncname()) == 0 || len(f.GetArgs()) != 3 {
			return false
		}
		if strings.ToLower(f.GetFuncname()[len(f.GetFuncname())-1].GetString_().GetSval()) != "set_config" {
			return false
		}
		local := f.GetArgs()[2].GetAConst()
		if local == nil || local.GetBoolval() == nil || !local.GetBoolval().GetBoolval() {
			return false
		}
	}
	return true
}

// isDDL reports whether n changes the schema: any CREATE, ALTER or DROP
// statement, and the other utility statements that define or rename
// objects. Counting a few harmless ones (ALTER ROLE) only costs fresh
// preparations.
func isDDL(n *pg_query.Node) bool {
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().Get(0))
	if fd == nil {
		return false
	}
	name := string(fd.Name())
	switch {
	case strings.HasPrefix(name, "create_"), strings.HasPrefix(name, "alter_"), strings.HasPrefix(name, "drop"):
		return name != "alter_system_stmt"
	}
	switch name {
	case "define_stmt", "composite_type_stmt", "view_stmt", "rename_stmt", "index_stmt", "rule_stmt",
		"grant_stmt", "grant_role_stmt", "truncate_stmt", "reindex_stmt", "import_foreign_schema_stmt",
		"sec_label_stmt", "comment_stmt", "refresh_mat_view_stmt":
		return true
	}
	return false
}

// noTxBlock reports whether Postgres refuses n inside a transaction block.
func noTxBlock(n *pg_query.Node) bool {
	switch {
	case n.GetVacuumStmt() != nil:
		return n.GetVacuumStmt().GetIsVacuumcmd()
	case n.GetIndexStmt() != nil:
		return n.GetIndexStmt().GetConcurrent()
	case n.GetDropStmt() != nil:
		return n.GetDropStmt().GetConcurrent()
	case n.GetReindexStmt() != nil:
		for _, p := range n.GetReindexStmt().GetParams() {
			if strings.EqualFold(p.GetDefElem().GetDefname(), "concurrently") {
				return true
			}
		}
		return n.GetReindexStmt().GetKind() == pg_query.ReindexObjectType_REINDEX_OBJECT_SYSTEM ||
			n.GetReindexStmt().GetKind() == pg_query.ReindexObjectType_REINDEX_OBJECT_DATABASE
	case n.GetClusterStmt() != nil:
		return n.GetClusterStmt().GetRelation() == nil
	case n.GetAlterSystemStmt() != nil, n.GetCreatedbStmt() != nil, n.GetDropdbStmt() != nil,
		n.GetCreateTableSpaceStmt() != nil, n.GetDropTableSpaceStmt() != nil:
		return true
	}
	return false
}

// classifyTx records what a lone transaction statement does.
func (a *analysis) classifyTx(t *pg_query.TransactionStmt) {
	if t == nil || t.GetChain() {
		return
	}
	switch t.GetKind() {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
		a.tx = txBegin
		for _, o := range t.GetOptions() {
			d := o.GetDefElem()
			switch d.GetDefname() {
			case "transaction_read_only":
				if c := d.GetArg().GetAConst(); c != nil && c.GetIval().GetIval() == 1 {
					a.txReadOnly = true
				}
			case "transaction_isolation":
				if c := d.GetArg().GetAConst(); c != nil {
					lvl := strings.ToLower(c.GetSval().GetSval())
					a.txSnapshot = lvl == "repeatable read" || lvl == "serializable"
				}
			}
		}
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT:
		a.tx = txCommit
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		a.tx = txRollback
	case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		a.tx, a.savepoint = txSavepoint, t.GetSavepointName()
	case pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:
		a.tx, a.savepoint = txRelease, t.GetSavepointName()
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		a.tx, a.savepoint = txRollbackTo, t.GetSavepointName()
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE, pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		a.twoPhase = true
	}
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
		a.cursor = true
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
		if v.GetRelpersistence() == "t" || strings.EqualFold(v.GetSchemaname(), "pg_temp") {
			a.pinFor(PinTempTable)
		}
	case *pg_query.String:
		// A name qualified with pg_temp (a temporary type or function)
		// lives in the session's temporary schema.
		if strings.EqualFold(v.GetSval(), "pg_temp") {
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
