package proxy

import (
	"slices"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

func TestRaiseStatementIsOneDoBlockWhateverTheMessage(t *testing.T) {
	e := pgerr.Errorf(pgerr.ServerRejected, `team 'x' $brw$; DROP TABLE t; -- \ $$ END`)
	e.Detail = `detail with ' and \' and $body$`
	e.Hint = "hint"
	q := raiseStatement(e)
	tree, err := pg_query.Parse(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if n := len(tree.GetStmts()); n != 1 || tree.GetStmts()[0].GetStmt().GetDoStmt() == nil {
		t.Fatalf("%s is not one DO statement", q)
	}
	body := tree.GetStmts()[0].GetStmt().GetDoStmt().GetArgs()[0].GetDefElem().GetArg().GetString_().GetSval()
	if !strings.Contains(body, "DROP TABLE t") || !strings.HasPrefix(body, "BEGIN RAISE EXCEPTION") || !strings.HasSuffix(body, "; END") {
		t.Fatalf("DO body: %s", body)
	}
	// The body itself is one RAISE whose message is the whole text.
	if _, err := pg_query.Parse("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS " + quoteLiteral(body)); err != nil {
		t.Fatal(err)
	}
}

func TestHintStateFollowsSetResetAndResetAll(t *testing.T) {
	var s hintState
	s.apply(router.Hint{Name: router.HintTeam, Value: "t1"})
	s.apply(router.Hint{Name: router.HintShard, Value: "shard-1"})
	s.apply(router.Hint{Name: router.HintRole, Value: "PRIMARY"})
	if s.team != "t1" || s.shard != "shard-1" || !s.primary {
		t.Fatalf("after SETs: %+v", s)
	}
	s.apply(router.Hint{Name: router.HintRole, Reset: true})
	s.apply(router.Hint{Name: router.HintTeam, Reset: true})
	if s.team != "" || s.primary || s.shard != "shard-1" {
		t.Fatalf("after RESETs: %+v", s)
	}
	s.apply(router.Hint{Name: router.HintAll, Reset: true})
	if s.shard != "" || !s.set {
		t.Fatalf("after RESET ALL: %+v", s)
	}
}

func TestAnalysisClassifiesTransactionControlAndHintStatements(t *testing.T) {
	z := newAnalyzer(10)
	cases := []struct {
		sql       string
		tx        txKind
		ro        bool
		hintsOnly bool
		noData    bool
	}{
		{"BEGIN", txBegin, false, false, true},
		{"  begin read only", txBegin, true, false, true},
		{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", txBegin, true, false, true},
		{"begin read write", txBegin, false, false, true},
		{"COMMIT", txCommit, false, false, true},
		{"end", txCommit, false, false, true},
		{"ROLLBACK", txRollback, false, false, true},
		{"abort", txRollback, false, false, true},
		{"COMMIT AND CHAIN", txNone, false, false, true},
		{"ROLLBACK TO SAVEPOINT a", txRollbackTo, false, false, true},
		{"SAVEPOINT sa_1", txSavepoint, false, false, true},
		{"release savepoint sa_1", txRelease, false, false, true},
		{"BEGIN; SELECT 1", txNone, false, false, false},
		{"SET LOCAL brownie.team_id = 'x'", txNone, false, true, true},
		{"SET brownie.shard = 'shard-1'; RESET brownie.role", txNone, false, true, true},
		{"SET search_path = a", txNone, false, false, true},
		{"SELECT 1", txNone, false, false, false},
		{"INSERT INTO t SELECT 1", txNone, false, false, false},
		{"ending_soon", txNone, false, false, false},
	}
	for _, c := range cases {
		a := z.analyze(c.sql)
		if a.tx != c.tx || a.txReadOnly != c.ro || a.hintsOnly != c.hintsOnly || a.noData != c.noData {
			t.Errorf("%q: tx=%d ro=%v hintsOnly=%v noData=%v; want %d %v %v %v", c.sql, a.tx, a.txReadOnly, a.hintsOnly, a.noData, c.tx, c.ro, c.hintsOnly, c.noData)
		}
	}
	if a := z.analyze("ROLLBACK TO SAVEPOINT a"); a.savepoint != "a" {
		t.Errorf("ROLLBACK TO SAVEPOINT a names savepoint %q", a.savepoint)
	}
}

func TestAnalysisFindsWhatATransactionSpanningShardsReplaysOrRunsAlone(t *testing.T) {
	z := newAnalyzer(10)
	for _, c := range []struct {
		sql                        string
		local, noTxBlock, snapshot bool
	}{
		{"SET LOCAL statement_timeout = '5s'", true, false, false},
		{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", true, false, false},
		{"SELECT set_config('search_path', 'x', true)", true, false, false},
		{"SELECT set_config('search_path', 'x', false)", false, false, false},
		{"SET statement_timeout = '5s'", false, false, false},
		{"BEGIN ISOLATION LEVEL SERIALIZABLE", false, false, true},
		{"BEGIN ISOLATION LEVEL READ COMMITTED", false, false, false},
		{"VACUUM items", false, true, false},
		{"ANALYZE items", false, false, false},
		{"CREATE INDEX CONCURRENTLY i ON t (a)", false, true, false},
		{"CREATE INDEX i ON t (a)", false, false, false},
		{"DROP INDEX CONCURRENTLY i", false, true, false},
		{"REINDEX (CONCURRENTLY) TABLE t", false, true, false},
		{"ALTER SYSTEM SET work_mem = '8MB'", false, true, false},
	} {
		a := z.analyze(c.sql)
		if a.local != c.local || a.noTxBlock != c.noTxBlock || a.txSnapshot != c.snapshot {
			t.Errorf("%q: local=%v noTxBlock=%v snapshot=%v; want %v %v %v", c.sql, a.local, a.noTxBlock, a.txSnapshot, c.local, c.noTxBlock, c.snapshot)
		}
	}
	// What a leg opened later replays: RELEASE drops the savepoint (and
	// later ones) but keeps settings; ROLLBACK TO keeps the savepoint and
	// drops what followed.
	var list []txStmt
	for _, sql := range []string{"SET LOCAL a.x = '1'", "SAVEPOINT s", "SET LOCAL a.y = '2'", "SAVEPOINT t", "SET LOCAL a.z = '3'"} {
		list = recordTxStmt(list, z.analyze(sql), sql)
	}
	text := func(l []txStmt) string {
		var s []string
		for _, x := range l {
			s = append(s, x.SQL)
		}
		return strings.Join(s, "; ")
	}
	if got := text(recordTxStmt(list, z.analyze("ROLLBACK TO SAVEPOINT t"), "")); got != "SET LOCAL a.x = '1'; SAVEPOINT s; SET LOCAL a.y = '2'; SAVEPOINT t" {
		t.Errorf("after ROLLBACK TO t: %s", got)
	}
	if got := text(recordTxStmt(slices.Clone(list), z.analyze("RELEASE s"), "")); got != "SET LOCAL a.x = '1'; SET LOCAL a.y = '2'; SET LOCAL a.z = '3'" {
		t.Errorf("after RELEASE s: %s", got)
	}
}
