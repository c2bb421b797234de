package router

import (
	"slices"
	"testing"
)

func TestLeadingCommentsCarryHints(t *testing.T) {
	cases := []struct {
		sql     string
		team    string
		shard   string
		primary bool
		rest    string
		code    string
	}{
		{sql: "SELECT 1", rest: "SELECT 1"},
		{sql: "  \n SELECT 1", rest: "SELECT 1"},
		{sql: "/* brownie:team_id=abc */SELECT 1", team: "abc", rest: "SELECT 1"},
		{sql: "/*brownie:shard=s1 brownie:role=primary*/ SELECT 1", shard: "s1", primary: true, rest: "SELECT 1"},
		{sql: "/* x /* nested brownie:shard=s2 */ y */ SELECT 1", shard: "s2", rest: "SELECT 1"},
		{sql: "/* traceparent='00-ab', BROWNIE:TEAM_ID=\"t 1\" */ SELECT 1", team: "t 1", rest: "SELECT 1"},
		{sql: "-- brownie:team_id=a\n-- brownie:team_id=b\nSELECT 1", team: "b", rest: "SELECT 1"},
		{sql: "/* notbrownie:team_id=a */ SELECT 1", rest: "SELECT 1"},
		{sql: "SELECT 1 /* brownie:team_id=a */", rest: "SELECT 1 /* brownie:team_id=a */"},
		{sql: "/* unterminated brownie:team_id=a", rest: "/* unterminated brownie:team_id=a"},
		{sql: "/* brownie:team_id= */ SELECT 1", code: "22023"},
		{sql: "/* brownie:team_id='abc */ SELECT 1", code: "22023"},
		{sql: "/* brownie:color=red */ SELECT 1", code: "22023"},
		{sql: "/* brownie:role=replica */ SELECT 1", rest: "SELECT 1"},
	}
	for _, c := range cases {
		ch, rest, err := scanLeadingComments(c.sql)
		if c.code != "" {
			if string(pgCode(err)) != c.code {
				t.Errorf("%q: err = %v, want %s", c.sql, err, c.code)
			}
			continue
		}
		if err != nil || ch.team != c.team || ch.shard != c.shard || ch.primary != c.primary || rest != c.rest {
			t.Errorf("%q: %+v %q %v", c.sql, ch, rest, err)
		}
	}
}

func TestStartupOptionsCarryHints(t *testing.T) {
	hints, rest, err := StartupHints(`-c timezone=UTC -c brownie.team_id=abc --brownie.shard=s1 -cbrownie.role=primary -c search_path=a\ b`)
	if err != nil {
		t.Fatal(err)
	}
	want := []Hint{{Name: HintTeam, Value: "abc"}, {Name: HintShard, Value: "s1"}, {Name: HintRole, Value: "primary"}}
	if !slices.Equal(hints, want) {
		t.Errorf("hints %+v", hints)
	}
	if rest != `-c timezone=UTC -c search_path=a\ b` {
		t.Errorf("rest %q", rest)
	}
	if _, _, err := StartupHints("-c brownie.tenant=x"); pgCode(err) != "42704" {
		t.Errorf("unknown brownie setting: %v", err)
	}
	if h, rest, err := StartupHints("-c timezone=UTC"); err != nil || h != nil || rest != "-c timezone=UTC" {
		t.Errorf("no hints: %v %q %v", h, rest, err)
	}
	r := testRouter(t)
	for _, h := range want[:2] {
		if err := r.CheckHint(h); err == nil {
			t.Errorf("CheckHint(%+v) accepted a value the test map does not have", h)
		}
	}
	if err := r.CheckHint(Hint{Name: HintTeam, Value: teamA}); err != nil {
		t.Error(err)
	}
	if err := r.CheckHint(Hint{Name: HintShard, Value: "shard-b"}); err != nil {
		t.Error(err)
	}
}
