package sqltree

import (
	"errors"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

func parse(t *testing.T, sql string) *pg.ParseResult {
	t.Helper()
	tree, err := pg.Parse(sql)
	if err != nil {
		t.Fatalf("parse %q: %v", sql, err)
	}
	return tree
}

func TestPrintReturnsTextThatParsesBack(t *testing.T) {
	for _, sql := range []string{
		"SELECT a, count(*) FROM t WHERE b = $1 GROUP BY a",
		"INSERT INTO t (a) VALUES ($1); UPDATE t SET a = 2",
	} {
		out, err := Print(parse(t, sql))
		if err != nil {
			t.Fatalf("Print(%q): %v", sql, err)
		}
		if got, want := len(parse(t, out).GetStmts()), len(parse(t, sql).GetStmts()); got != want {
			t.Errorf("Print(%q) = %q: %d statements, want %d", sql, out, got, want)
		}
	}
}

func TestPrintReportsParamZero(t *testing.T) {
	for _, sql := range []string{
		"SELECT count(*) FROM t WHERE a = $0",
		"SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE c = $0)",
	} {
		if _, err := Print(parse(t, sql)); !errors.Is(err, ErrParamZero) {
			t.Errorf("Print(%q) = %v, want ErrParamZero", sql, err)
		}
	}
	if HasParamZero(parse(t, "SELECT $1, $2").ProtoReflect()) {
		t.Error("HasParamZero reports $1 and $2 as $0")
	}
}

func TestPrintRefusesTextThatDoesNotParseBack(t *testing.T) {
	// A type modifier given by an expression deparses as "''::a()".
	sql := "SELECT A(!0)''"
	out, err := Print(parse(t, sql))
	if err == nil || errors.Is(err, ErrParamZero) {
		t.Fatalf("Print(%q) = %q, %v; want an error that it does not parse back", sql, out, err)
	}
}
