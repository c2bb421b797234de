package router

import (
	"errors"
	"slices"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// FuzzKeyExtraction feeds random statement texts and Bind parameters to the
// key extraction and the router. Whatever the input: no panic; errors are
// client errors (*pgerr.Error); Keys is deterministic and its keys round-
// trip through their text form; and every key found is placed on a shard
// the decision includes — unless a brownie.shard hint overrides keys.
func FuzzKeyExtraction(f *testing.F) {
	r := testRouter(f)
	uA := uuidBin(f, teamA)
	for _, s := range []struct {
		sql    string
		p1, p2 []byte
		bits   int
	}{
		{"SELECT * FROM incidents WHERE team_id = $1", txt(teamA), nil, 0},
		{"SELECT * FROM incidents WHERE incidents.team_id = $1::UUID LIMIT $2::INTEGER", uA, int4Bin(5), 3},
		{"SELECT * FROM incidents WHERE team_id = ANY($1)", txt("{" + teamA + "," + teamB + "}"), nil, 0},
		{"SELECT * FROM incidents WHERE team_id = ANY($1::uuid[])", arrayBin(oidUUID, uA), nil, 1},
		{"INSERT INTO incidents (team_id, title) VALUES ($1, $2), ($2, $1)", txt(teamC), txt(teamO), 0},
		{"SELECT * FROM stats WHERE team_id = $1 OR team_id IS NULL", nil, nil, 4},
		{"WITH x AS (SELECT * FROM incidents i JOIN agent_configs a USING (team_id) WHERE team_id IN ($1, $2)) SELECT * FROM x", txt(teamB), txt(teamC), 0},
		{"/* brownie:team_id=" + teamA + " */ UPDATE incidents SET team_id = $2 WHERE team_id = $1", uA, uA, 1},
		{"SELECT * FROM teams t LEFT JOIN incidents i ON i.team_id = t.id WHERE t.id = '" + teamB + "'", nil, nil, 0},
		{"SELECT set_config('brownie.team_id', $1, false)", txt(teamA), nil, 0},
	} {
		f.Add(s.sql, s.p1, s.p2, s.bits)
	}
	f.Fuzz(func(t *testing.T, sql string, p1, p2 []byte, bits int) {
		params := [][]byte{p1, p2}
		if bits&4 != 0 {
			params[0] = nil
		}
		if bits&8 != 0 {
			params[1] = nil
		}
		formats := []int16{int16(bits & 1), int16(bits >> 1 & 1)}
		var oids []uint32
		if bits&16 != 0 {
			oids = []uint32{oidText, oidInt8}
		}

		p, _ := r.Plan(sql)
		keys, kerr := p.Keys(params, formats, oids)
		if kerr != nil {
			var pe *pgerr.Error
			if !errors.As(kerr, &pe) {
				t.Fatalf("Keys error is not a client error: %v", kerr)
			}
		}
		again, _ := p.Keys(params, formats, oids)
		if kerr == nil && !slices.Equal(keys, again) {
			t.Fatalf("Keys not deterministic: %v then %v", keys, again)
		}
		for _, k := range keys {
			back, err := ParseKey(k.Type(), k.String())
			if err != nil || back != k {
				t.Fatalf("key %v does not round-trip: %v %v", k, back, err)
			}
		}

		d, err := r.Route(SessionFacts{}, StmtInfo{SQL: sql, Params: params, Formats: formats, ParamOIDs: oids})
		if err != nil {
			var pe *pgerr.Error
			if !errors.As(err, &pe) {
				t.Fatalf("Route error is not a client error: %v", err)
			}
			return
		}
		if len(d.Shards) == 0 {
			t.Fatalf("decision without shards: %+v", d)
		}
		if d.Kind == OneShard && len(d.Shards) != 1 {
			t.Fatalf("one shard, %d names", len(d.Shards))
		}
		ch, _, _ := scanLeadingComments(sql)
		if kerr != nil || ch.shard != "" || d.Reason == ReasonUnparsed {
			return
		}
		for _, k := range keys {
			if home := r.Place(k); !slices.Contains(d.Shards, home) || d.Kind == AnyShard {
				t.Fatalf("key %s lives on %s but the decision is %s", k, home, d.Explain())
			}
		}
	})
}
