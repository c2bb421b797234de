package proxy

import (
	"strconv"
	"testing"
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
