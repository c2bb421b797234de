package router

import (
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// Test teams of the three-shard test map, with their hash placement
// (checked by TestTestTeamsPlaceAsAssumed).
const (
	teamA = "00000001-0000-4000-8000-000000000001" // shard-a
	teamB = "00000005-0000-4000-8000-000000000005" // shard-b
	teamC = "00000003-0000-4000-8000-000000000003" // shard-c
	teamO = "00000002-0000-4000-8000-000000000002" // hashes to shard-a, overridden to shard-c
)

const testMapYAML = `
key_type: uuid
keyless: reject
shards:
  - {name: shard-a, primary: 127.0.0.1:5001, replicas: [127.0.0.1:5002]}
  - {name: shard-b, primary: 127.0.0.1:5011}
  - {name: shard-c, primary: 127.0.0.1:5021}
tables:
  teams: {sharded_by: id}
  incidents: {sharded_by: team_id}
  agent_configs: {sharded_by: team_id}
  stats: {sharded_by: team_id, null_shard: shard-c, keyless: all}
  configs: {sharded_by: team_id, keyless: default, default_shard: shard-b}
  organizations: replicated
  users: replicated
  alembic_version: replicated
overrides:
  "` + teamO + `": shard-c
`

var allShards = []string{"shard-a", "shard-b", "shard-c"}

func testRouter(tb testing.TB) *Router {
	tb.Helper()
	return routerFromYAML(tb, testMapYAML)
}

func routerFromYAML(tb testing.TB, y string) *Router {
	tb.Helper()
	m, err := ParseMap([]byte(y))
	if err != nil {
		tb.Fatalf("ParseMap: %v", err)
	}
	r, err := New(m)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return r
}

func brownieRouter(tb testing.TB) *Router {
	tb.Helper()
	m, err := LoadMap(filepath.Join("..", "deploy", "shardmap", "brownie.yaml"))
	if err != nil {
		tb.Fatalf("LoadMap: %v", err)
	}
	r, err := New(m)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return r
}

// Bind parameter encoders, as drivers send them.

func txt(s string) []byte { return []byte(s) }

func uuidBin(tb testing.TB, s string) []byte {
	tb.Helper()
	u, err := parseUUID(s)
	if err != nil {
		tb.Fatalf("uuid %q: %v", s, err)
	}
	return u[:]
}

func int8Bin(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }
func int4Bin(n int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }
func int2Bin(n int16) []byte { return binary.BigEndian.AppendUint16(nil, uint16(n)) }

// arrayBin encodes a one-dimensional array in array_send format; nil
// elements are NULL.
func arrayBin(elem uint32, elems ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 1) // ndim
	hasNull := uint32(0)
	for _, e := range elems {
		if e == nil {
			hasNull = 1
		}
	}
	b = binary.BigEndian.AppendUint32(b, hasNull)
	b = binary.BigEndian.AppendUint32(b, elem)
	b = binary.BigEndian.AppendUint32(b, uint32(len(elems)))
	b = binary.BigEndian.AppendUint32(b, 1) // lower bound
	for _, e := range elems {
		if e == nil {
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b
}

// pgCode returns the SQLSTATE of a *pgerr.Error, or "" for other errors.
func pgCode(err error) pgerr.Code {
	var pe *pgerr.Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./router -run %s -update)", err, t.Name())
	}
	if string(want) != got {
		t.Errorf("%s differs from the output (go test ./router -run %s -update rewrites it):\n--- want\n%s\n--- got\n%s", path, t.Name(), want, got)
	}
}

func TestTestTeamsPlaceAsAssumed(t *testing.T) {
	r := testRouter(t)
	for team, want := range map[string]string{teamA: "shard-a", teamB: "shard-b", teamC: "shard-c", teamO: "shard-c"} {
		k, err := r.ParseKey(team)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Place(k); got != want {
			t.Errorf("Place(%s) = %s, the tests assume %s", team, got, want)
		}
	}
	k, _ := r.ParseKey(teamO)
	if ShardIndex(k, 3) != 0 {
		t.Errorf("team O hashes to %d; the override test needs it off shard-c", ShardIndex(k, 3))
	}
}
