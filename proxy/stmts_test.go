package proxy

import (
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestAStatementKeepsAFewRewritesByTextWithItsParameterTypes(t *testing.T) {
	d := newStmtDef("SELECT $1", []uint32{23}, nil, 7)
	if d.Variant("SELECT $1") != d {
		t.Error("the statement's own text is not the statement")
	}
	v := d.Variant("SELECT $1 LIMIT 5").(*stmtDef)
	if d.Variant("SELECT $1 LIMIT 5") != v {
		t.Error("the same rewrite made twice: it would be prepared twice on every upstream")
	}
	if len(v.oids) != 1 || v.oids[0] != 23 || v.gen != 7 || v.key == d.key || v.key != stmtKey("SELECT $1 LIMIT 5", []uint32{23}, 7) {
		t.Errorf("rewrite %+v of %+v", v, d)
	}
	for i := range 10 {
		d.Variant("SELECT " + strconv.Itoa(i))
	}
	if len(d.variants) != maxVariants || d.variants[0].query != "SELECT 9" {
		t.Errorf("%d rewrites kept, most recent %q", len(d.variants), d.variants[0].query)
	}
}

func TestResultDescriptionsCompareColumnsAsPostgresDoes(t *testing.T) {
	rowDesc := func(fields ...pgproto3.FieldDescription) []byte {
		b, err := (&pgproto3.RowDescription{Fields: fields}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b[5:]
	}
	col := func(name string, table uint32, typ uint32, mod int32) pgproto3.FieldDescription {
		return pgproto3.FieldDescription{Name: []byte(name), TableOID: table, TableAttributeNumber: 1, DataTypeOID: typ, DataTypeSize: 4, TypeModifier: mod}
	}
	base := resultDesc('T', rowDesc(col("id", 100, 23, -1), col("note", 100, 25, -1)))
	if base == "" {
		t.Fatal("a well-formed RowDescription gave no description")
	}
	same := resultDesc('T', rowDesc(col("id", 900, 23, -1), col("note", 900, 25, -1)))
	if same != base {
		t.Error("the same columns from another table (another shard's) differ")
	}
	enum := resultDesc('T', rowDesc(col("id", 100, 23, -1), col("mood", 100, 16390, -1)))
	if resultDesc('T', rowDesc(col("id", 900, 23, -1), col("mood", 900, 17001, -1))) != enum {
		t.Error("a user-defined type, which each shard gives its own OID, differs between shards")
	}
	if enum == resultDesc('T', rowDesc(col("id", 100, 23, -1), col("mood", 100, 25, -1))) {
		t.Error("a user-defined type compares equal to text")
	}
	for name, other := range map[string]string{
		"a column fewer":   resultDesc('T', rowDesc(col("id", 100, 23, -1))),
		"another type":     resultDesc('T', rowDesc(col("id", 100, 20, -1), col("note", 100, 25, -1))),
		"another modifier": resultDesc('T', rowDesc(col("id", 100, 23, -1), col("note", 100, 25, 14))),
		"another name":     resultDesc('T', rowDesc(col("id", 100, 23, -1), col("text", 100, 25, -1))),
		"no data":          resultDesc('n', nil),
		"no columns":       resultDesc('T', rowDesc()),
	} {
		if other == base || other == "" {
			t.Errorf("%s: %q against %q", name, other, base)
		}
	}
	if resultDesc('n', nil) == resultDesc('T', rowDesc()) {
		t.Error("NoData and a row of no columns compare equal")
	}
	whole := rowDesc(col("id", 100, 23, -1))
	for _, bad := range [][]byte{nil, whole[:5], whole[:len(whole)-1], append(append([]byte{}, whole...), 0)} {
		if d := resultDesc('T', bad); d != "" {
			t.Errorf("malformed RowDescription %x gave %q", bad, d)
		}
	}
}

func TestOnlyQueriesAndDMLHaveAResultFixedAtPrepare(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1": true, " /* c */ select * from t": true, "-- c\nWITH x AS (SELECT 1) SELECT * FROM x": true,
		"(SELECT 1) UNION (SELECT 2)": true, "values (1)": true, "TABLE t": true, "INSERT INTO t VALUES (1) RETURNING *": true,
		"update t set a = 1": true, "DELETE FROM t": true, "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE": true,
		`fetch all in "c"`: false, "EXPLAIN SELECT 1": false, "SHOW TimeZone": false, "CALL p()": false, "": false, "selectx": false,
	} {
		if got := plannable(q); got != want {
			t.Errorf("plannable(%q) = %v, want %v", q, got, want)
		}
	}
}

func TestAParseLikeThePreviousOneSharesItsTextAndTypes(t *testing.T) {
	body := appendParse(nil, "", "SELECT abalance FROM pgbench_accounts WHERE aid = $1", []uint32{23})[5:]
	prev, err := decodeParse(body, &parseMsg{})
	if err != nil {
		t.Fatal(err)
	}
	var m parseMsg
	if allocs := testing.AllocsPerRun(100, func() { m, _ = decodeParse(body, &prev) }); allocs != 0 {
		t.Errorf("decoding the same Parse again allocated %v times, want 0", allocs)
	}
	if &m.oids[0] != &prev.oids[0] || m.query != prev.query {
		t.Errorf("decodeParse = %+v, want the previous Parse's text and types", m)
	}

	other := appendParse(nil, "", prev.query, []uint32{20})[5:]
	if m, _ = decodeParse(other, &prev); len(m.oids) != 1 || m.oids[0] != 20 || prev.oids[0] != 23 {
		t.Errorf("a Parse with other parameter types decoded as %v (previous %v)", m.oids, prev.oids)
	}
}
