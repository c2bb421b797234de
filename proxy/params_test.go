package proxy

import "testing"

func TestParamSetsShareEqualValues(t *testing.T) {
	var ps paramSets
	a := &upstream{params: map[string]string{"TimeZone": "UTC", "in_hot_standby": "off"}}
	b := &upstream{params: map[string]string{"TimeZone": "UTC", "in_hot_standby": "off"}}
	c := &upstream{params: map[string]string{"TimeZone": "UTC", "in_hot_standby": "on"}}
	sa, sb, sc := ps.of(a), ps.of(b), ps.of(c)
	if sa != sb {
		t.Fatal("equal values got different sets")
	}
	if sa == sc {
		t.Fatal("different values got the same set")
	}
	b.params["TimeZone"] = "Europe/Paris"
	b.paramsVersion++
	if ps.of(b) == sa {
		t.Fatal("a changed value kept the old set")
	}
	if sa.values["TimeZone"] != "UTC" {
		t.Fatal("an interned set changed with its upstream's values")
	}
	if ps.of(a) != sa {
		t.Fatal("an unchanged upstream got another set")
	}
	for i := 0; i < 2*maxParamSets; i++ { // the bound holds
		u := &upstream{params: map[string]string{"application_name": string(rune('a' + i))}}
		ps.of(u)
	}
	if len(ps.recent) != maxParamSets {
		t.Fatalf("kept %d sets, want %d", len(ps.recent), maxParamSets)
	}
}

func TestMayTouchStateFindsKeywordsAnywhereInAnyCase(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", false},
		{"select 1", false},
		{"SET search_path = x", true},
		{"select pg_advisory_lock(1)", true},
		{"SELECT * INTO t FROM u", true},
		{"LiStEn chan", true},
		{"create TEMP table t()", true},
		{"reindex table t", true},
		{"selec", false},
		{"", false},
	} {
		if got := mayTouchState(tc.sql); got != tc.want {
			t.Errorf("mayTouchState(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}
