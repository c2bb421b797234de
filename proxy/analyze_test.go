package proxy

import "testing"

func TestAnalysisMarksSchemaChangesDeallocateAndTemporaryNames(t *testing.T) {
	z := newAnalyzer(100)
	for _, c := range []struct {
		sql           string
		ddl           bool
		deallocate    string
		deallocateAll bool
		discardAll    bool
		pin           string
	}{
		{sql: "SELECT created_at FROM incidents"},
		{sql: "CREATE TYPE mood AS ENUM ('sad')", ddl: true},
		{sql: "drop type if exists ct; create type ct as (a int)", ddl: true},
		{sql: "ALTER TABLE incidents ADD COLUMN note text", ddl: true},
		{sql: "BEGIN; DROP TABLE x; COMMIT", ddl: true},
		{sql: "/* migration 12 */ ALTER TABLE incidents ADD COLUMN note text", ddl: true},
		{sql: "-- migration 12\nDROP TABLE x", ddl: true},
		{sql: "SELECT 1; DROP TABLE x", ddl: true},
		{sql: "SELECT ';' FROM incidents; -- done"},
		{sql: "DEALLOCATE stmtcache_1", deallocate: "stmtcache_1", pin: PinSQLPrepare},
		{sql: "DEALLOCATE ALL", deallocateAll: true, pin: PinSQLPrepare},
		{sql: "DISCARD ALL", discardAll: true},
		{sql: "create type pg_temp.text_range as range (subtype = text)", ddl: true, pin: PinTempTable},
		{sql: "select pg_temp.f(1)", pin: PinTempTable},
	} {
		a := z.analyze(c.sql)
		if a.ddl != c.ddl || a.deallocate != c.deallocate || a.deallocateAll != c.deallocateAll || a.discardAll != c.discardAll || a.pin != c.pin {
			t.Errorf("%q: ddl %v deallocate %q all %v discardAll %v pin %q; want %+v", c.sql, a.ddl, a.deallocate, a.deallocateAll, a.discardAll, a.pin, c)
		}
	}
}

func TestTransactionControlIsFoundAfterCommentsAndEmptyStatements(t *testing.T) {
	z := newAnalyzer(100)
	for _, c := range []struct {
		sql string
		tx  txKind
	}{
		{"BEGIN", txBegin},
		{"/* app: checkout */ BEGIN", txBegin},
		{"/* a /* nested */ comment */ COMMIT", txCommit},
		{"-- retry\nROLLBACK", txRollback},
		{";\fSTART TRANSACTION", txBegin},
		{"/* unclosed BEGIN", txNone},
		{"SELECT 'BEGIN'", txNone},
	} {
		if a := z.analyze(c.sql); a.tx != c.tx {
			t.Errorf("%q: tx %d, want %d", c.sql, a.tx, c.tx)
		}
	}
}

func TestSyntaxErrorsAreWordedAndPositionedAsPostgresDoes(t *testing.T) {
	z := newAnalyzer(100)
	for _, c := range []struct {
		sql, msg string
		pos      int
	}{
		{"selec 1", `syntax error at or near "selec"`, 1},
		{"select 1 from pg_class where", "syntax error at end of input", 29},
		{"select 'é' + + from", `syntax error at or near "from"`, 16}, // characters, not bytes
	} {
		e := z.syntaxError(c.sql)
		if e == nil || e.Code != "42601" || e.Message != c.msg || e.Position != c.pos {
			t.Errorf("%q: %+v, want 42601 %q at %d", c.sql, e, c.msg, c.pos)
		}
	}
	for _, ok := range []string{"select 1", "select $1::int", "select 'it''s'"} {
		if e := z.syntaxError(ok); e != nil {
			t.Errorf("%q: %v", ok, e)
		}
	}
}
