package router

import (
	"testing"
)

const benchSQL = "SELECT incidents.id, incidents.title, incidents.status FROM incidents WHERE incidents.team_id = $1::UUID AND incidents.status = $2 ORDER BY incidents.created_at DESC LIMIT $3::INTEGER"

// BenchmarkPlanCacheHit measures Plan for a statement already compiled:
// the per-execution cost of finding its plan.
func BenchmarkPlanCacheHit(b *testing.B) {
	r := testRouter(b)
	if _, err := r.Plan(benchSQL); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Plan(benchSQL); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRouteBind measures a whole Route of a cached statement with
// binary Bind parameters (as pgx sends them): plan lookup, key decoding,
// placement and the decision.
func BenchmarkRouteBind(b *testing.B) {
	r := testRouter(b)
	st := StmtInfo{SQL: benchSQL, Params: [][]byte{uuidBin(b, teamB), []byte("OPEN"), int4Bin(50)}, Formats: []int16{1, 0, 1}}
	if d, err := r.Route(SessionFacts{}, st); err != nil || d.Shards[0] != "shard-b" {
		b.Fatal(d, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Route(SessionFacts{}, st); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRouteBindParallel is BenchmarkRouteBind from every core at once
// (the plan cache's lock is shared).
func BenchmarkRouteBindParallel(b *testing.B) {
	r := testRouter(b)
	st := StmtInfo{SQL: benchSQL, Params: [][]byte{[]byte(teamB), []byte("OPEN"), []byte("50")}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Route(SessionFacts{}, st); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPlanMiss measures compiling a statement (a cache miss): the
// parse with pg_query and the analysis.
func BenchmarkPlanMiss(b *testing.B) {
	r := testRouter(b)
	s := r.cur.Load()
	b.ReportAllocs()
	for b.Loop() {
		compilePlan(s.compiled, benchSQL)
	}
}
