package router

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShippedBrownieMapIsValid(t *testing.T) {
	r := brownieRouter(t)
	m := r.Map()
	if m.KeyType != KeyUUID || len(m.Shards) != 2 || m.Unlisted != UnlistedReject {
		t.Fatalf("map %+v", m)
	}
	want := map[string]string{
		"shard-0": "127.0.0.1:15432 [127.0.0.1:15433]",
		"shard-1": "127.0.0.1:15442 [127.0.0.1:15443]",
	}
	for _, s := range m.Shards {
		var reps []string
		for _, h := range s.Replicas {
			reps = append(reps, h.Addr)
		}
		if got := s.Primary.Addr + " [" + strings.Join(reps, " ") + "]"; got != want[s.Name] {
			t.Errorf("%s: %s, want %s", s.Name, got, want[s.Name])
		}
	}
	classes := map[string]string{}
	for _, tb := range m.Tables {
		c := tb.Class.String()
		if tb.Class == Sharded {
			c += " by " + tb.KeyColumn + " keyless " + tb.Keyless.String()
			if tb.NullShard != "" {
				c += " null " + tb.NullShard
			}
		}
		classes[tb.Name] = c
	}
	for name, want := range map[string]string{
		"teams":           "sharded by id keyless all",
		"incidents":       "sharded by team_id keyless all",
		"agent_configs":   "sharded by team_id keyless all",
		"stats":           "sharded by team_id keyless all null shard-0",
		"configs":         "sharded by team_id keyless all null shard-0",
		"users":           "replicated",
		"organizations":   "replicated",
		"alembic_version": "replicated",
	} {
		if classes[name] != want {
			t.Errorf("table %s: %q, want %q", name, classes[name], want)
		}
	}
	// Every table of the Brownie schema is in the map.
	schema, err := os.ReadFile(filepath.Join("..", "deploy", "sql", "01_schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(schema), "\n") {
		if name, ok := strings.CutPrefix(line, "CREATE TABLE IF NOT EXISTS public."); ok {
			name = strings.TrimSuffix(strings.Fields(name)[0], "(")
			if _, ok := classes[name]; !ok {
				t.Errorf("schema table %s is not in the shard map", name)
			}
		}
	}
}

func TestParseMapReportsEveryProblem(t *testing.T) {
	_, err := ParseMap([]byte(`
key_type: uuid
keyless: sometimes
shards:
  - name: s0
    primary: 127.0.0.1:5432
    replicas: [127.0.0.1]
  - name: s0
    primary: {addr: "127.0.0.1:5432", server_nam: x}
  - primary: localhost:99999
  - name: "bad name"
    primary: h:1
    extra: 1
tables:
  incidents: {sharded_by: team_id, keyless: default}
  stats: {sharded_by: team_id, null_shard: nowhere}
  configs: {keyless: all}
  users: replicated
  orgs: global
  teams: {sharded_by: id, keyless: all, default_shard: s0}
  incidents2: {sharded_by: team_id, keyless: maybe}
overrides:
  not-a-uuid: s0
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11": s9
  "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12": s0
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12": s0
unknown_top: 1
`))
	if err == nil {
		t.Fatal("ParseMap accepted a broken map")
	}
	golden(t, "map_errors.golden", err.Error()+"\n")
	for _, want := range []string{
		`line 3: keyless policy "sometimes"`,
		`shard "s0": replica 1: address "127.0.0.1": missing port in address`,
		`unknown field "server_nam"`,
		`shard "s0": name used twice`,
		`shards[2]: no name`,
		`port must be 1-65535`,
		`"bad name"`,
		`unknown field "extra"`,
		`table "incidents": keyless: default needs default_shard`,
		`table "stats": null_shard "nowhere" is not a shard`,
		`table "configs": a sharded table needs sharded_by`,
		`tables.orgs: "global" is not a table class`,
		`table "teams": default_shard is only used with keyless: default`,
		`keyless policy "maybe"`,
		`override "not-a-uuid": not a valid uuid key`,
		`override "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11": shard "s9" is not a shard`,
		`team listed twice`,
		`unknown field "unknown_top"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
}

func TestParseMapRefusesEmptyAndNonYAML(t *testing.T) {
	for _, in := range []string{"", "[1, 2", "just a string", "shards: {}"} {
		if _, err := ParseMap([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	if _, err := LoadMap(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "shard map") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseMapDefaults(t *testing.T) {
	m, err := ParseMap([]byte(`
shards:
  - {name: a, primary: {addr: "db.internal:5432", server_name: db}}
tables:
  t: {sharded_by: k}
  u: {sharded_by: k, keyless: default, default_shard: a}
`))
	if err != nil {
		t.Fatal(err)
	}
	if m.KeyType != KeyUUID || m.Unlisted != UnlistedReject || m.Shards[0].Primary.ServerName != "db" {
		t.Errorf("defaults: %+v", m)
	}
	if m.Tables[0].Keyless != KeylessReject || m.Tables[1].Keyless != KeylessDefault {
		t.Errorf("tables: %+v", m.Tables)
	}
	m, err = ParseMap([]byte("keyless: all\nunlisted_tables: replicated\nshards: [{name: a, primary: 'h:1'}]\ntables: {t: {sharded_by: k}, r: replicated}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Tables[0].Keyless != KeylessAll || m.Tables[1].Class != Replicated || m.Unlisted != UnlistedReplicated {
		t.Errorf("map-wide keyless: %+v", m)
	}
}

func TestValidateGoBuiltMaps(t *testing.T) {
	if err := (&Map{}).Validate(); err == nil || !strings.Contains(err.Error(), "no shards") {
		t.Errorf("empty map: %v", err)
	}
	m := &Map{
		Shards: []Shard{{Name: "a", Primary: Host{Addr: "h:1"}}, {Name: "b", Primary: Host{Addr: "h:1"}}},
		Tables: []Table{{Name: "t", Class: Replicated, KeyColumn: "k"}, {Name: "public.t", Class: Sharded, KeyColumn: "k"}, {Name: "x"}},
	}
	err := m.Validate()
	for _, want := range []string{"address h:1 is also", "takes no sharded_by", `"public.t": listed twice`, `"x": class must be`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestParseMapReadsSynchronousShardsAndRefusesOneWithoutAStandby(t *testing.T) {
	m, err := ParseMap([]byte(`
shards:
  - {name: s0, primary: "127.0.0.1:5432", replicas: ["127.0.0.1:5433"], synchronous: true}
  - {name: s1, primary: "127.0.0.1:5442", replicas: ["127.0.0.1:5443"], synchronous: false}
  - {name: s2, primary: "127.0.0.1:5452"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if !m.Shards[0].Synchronous || m.Shards[1].Synchronous || m.Shards[2].Synchronous {
		t.Errorf("synchronous flags: %v %v %v, want true false false", m.Shards[0].Synchronous, m.Shards[1].Synchronous, m.Shards[2].Synchronous)
	}
	_, err = ParseMap([]byte(`
shards:
  - {name: s0, primary: "127.0.0.1:5432", synchronous: true}
  - {name: s1, primary: "127.0.0.1:5442", replicas: ["127.0.0.1:5443"], synchronous: maybe}
`))
	if err == nil {
		t.Fatal("accepted a synchronous shard without a replica and a bad flag")
	}
	for _, want := range []string{`shard "s0": synchronous needs at least one replica`, `shards[1].synchronous "maybe": must be true or false`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
