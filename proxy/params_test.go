package proxy

import (
	"math/rand/v2"
	"strings"
	"testing"
)

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

func TestInternedSettingsShareEqualValues(t *testing.T) {
	var ts paramSets
	a := ts.intern(map[string]string{"application_name": "api", "datestyle": "ISO"})
	b := ts.intern(map[string]string{"datestyle": "ISO", "application_name": "api"})
	c := ts.intern(map[string]string{"application_name": "worker", "datestyle": "ISO"})
	if a != b {
		t.Fatal("equal settings got different sets")
	}
	if a == c {
		t.Fatal("different settings got the same set")
	}
	if ts.intern(map[string]string{}) == ts.intern(map[string]string{"x": ""}) {
		t.Fatal("an empty value was taken for a missing setting")
	}
	for i := range 2 * maxParamSets { // the bound holds
		ts.intern(map[string]string{"application_name": string(rune('a' + i))})
	}
	if len(ts.recent) != maxParamSets {
		t.Fatalf("kept %d sets, want %d", len(ts.recent), maxParamSets)
	}
	if got := ts.intern(map[string]string{"application_name": "api", "datestyle": "ISO"}); got == a || got.values["application_name"] != "api" {
		t.Fatal("a set dropped from the bound came back, or a new set lost its values")
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

// TestMayTouchStateMatchesPlainSearch checks the prefilter's letter-pair
// shortcut against the plain search it stands for: any keyword anywhere,
// ASCII letters in any case.
func TestMayTouchStateMatchesPlainSearch(t *testing.T) {
	lowerASCII := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		return string(b)
	}
	plain := func(s string) bool {
		for _, k := range stateKeywords {
			if strings.Contains(lowerASCII(s), k) {
				return true
			}
		}
		return false
	}
	texts := []string{"RESET search_path", "UNLISTEN *", "select set_config('a','b',false)", "SELECT pg_try_advisory_xact_lock(1)",
		"CREATE TEMPORARY TABLE x()", "se", "s", "SET", "sEt", "se\x00t", "SELECT 'ſet'", "é set", "tablespac", "DeAlLoCaTe p",
		"SELECT abalance FROM pgbench_accounts WHERE aid = $1", "UPDATE incidents SET status = 'OPEN' WHERE id = $1"}
	for _, k := range stateKeywords {
		texts = append(texts, k, strings.ToUpper(k), "SELECT x_"+k+"_y", k[:len(k)-1], strings.ToUpper(k[:1])+k[1:len(k)-1])
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "sSeEtTlLiIaAdDcCvVrRnNxXpPoOyYmMuU _.\x00é"
	for range 20000 {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		texts = append(texts, string(b))
	}
	for _, s := range texts {
		if got, want := mayTouchState(s), plain(s); got != want {
			t.Errorf("mayTouchState(%q) = %v, the plain search says %v", s, got, want)
		}
	}
}
