package main

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/brownie/brownie-sidecar/deploy/shardmap"
	"github.com/brownie/brownie-sidecar/router"
)

// This file decides what the sharded table's clusters hold before it runs:
// the shard maps the sidecars read, and the rows loaded straight into the
// one database (every row) and into each shard (its teams' rows), with the
// shard of a team computed by the sidecar's own router, so the loaded data
// is where the sidecar will look for it.

// benchUUID returns the uuid PostgreSQL computes as md5(name)::uuid, so Go
// and SQL derive the same ids from the same names and every run loads the
// same rows (and so the same placement).
func benchUUID(name string) string {
	sum := md5.Sum([]byte(name))
	h := hex.EncodeToString(sum[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// teamSet is one organization with its teams and, for the single-team
// transactions, the one user they look up.
type teamSet struct {
	org   string
	teams []string
	user  string // "" for the fan-out set
}

// dataset is every row the sharded table loads before it runs: the
// fan-out set, whose teams hold fanIncidents incidents, and one set per
// target for the single-team transactions, so each target's teams grow
// only with its own inserts (the one database serves two targets).
type dataset struct {
	fanout       teamSet
	fanIncidents int
	requests     map[string]teamSet // by target name
	targets      []string           // request sets in load order
}

// requestIncidentsPerTeam is how many incidents each single-team
// transaction team starts with: its SELECT … LIMIT 20 returns a full page
// from the first transaction on.
const requestIncidentsPerTeam = 20

// fanoutEpoch is the newest fan-out incident's time; incident n (1-based)
// was created n seconds before it, so the newest-first order is n = 1, 2,
// … and has no ties.
const fanoutEpoch = "2026-01-01 00:00:00+00"

// newDataset returns the rows for the given targets, teams teams per set
// and fanIncidents fan-out incidents spread evenly over the fan-out teams.
func newDataset(targets []string, teams, fanIncidents int) *dataset {
	set := func(prefix string, withUser bool) teamSet {
		s := teamSet{org: benchUUID(prefix + "-org")}
		for i := range teams {
			s.teams = append(s.teams, benchUUID(fmt.Sprintf("%s-team-%d", prefix, i)))
		}
		if withUser {
			s.user = benchUUID(prefix + "-user")
		}
		return s
	}
	d := &dataset{
		fanout:       set("bench-fanout", false),
		fanIncidents: fanIncidents,
		requests:     map[string]teamSet{},
		targets:      slices.Clone(targets),
	}
	for _, t := range targets {
		d.requests[t] = set("bench-request-"+t, true)
	}
	return d
}

// fanoutIncident returns the id of fan-out incident n (1-based), as the
// load SQL makes it.
func fanoutIncident(n int) string { return benchUUID(fmt.Sprintf("bench-fanout-incident-%d", n)) }

// fanoutTeam returns the index of the fan-out team that owns incident n.
func (d *dataset) fanoutTeam(n int) int { return n % len(d.fanout.teams) }

// newestFanout returns the ids of the newest limit fan-out incidents,
// newest first: what `ORDER BY created_at DESC LIMIT limit` must return,
// however many shards hold them.
func (d *dataset) newestFanout(limit int) []string {
	var ids []string
	for n := 1; n <= min(limit, d.fanIncidents); n++ {
		ids = append(ids, fanoutIncident(n))
	}
	return ids
}

// allTeams returns every team of the dataset, the fan-out set's first.
func (d *dataset) allTeams() []string {
	out := slices.Clone(d.fanout.teams)
	for _, t := range d.targets {
		out = append(out, d.requests[t].teams...)
	}
	return out
}

// placement returns the shard of every team under rt's map, as the sidecar
// will route it (overrides first, then the hash).
func placement(rt *router.Router, teams []string) (map[string]string, error) {
	out := make(map[string]string, len(teams))
	var errs []error
	for _, id := range teams {
		k, err := rt.ParseKey(id)
		if err != nil {
			errs = append(errs, fmt.Errorf("team %s: %w", id, err))
			continue
		}
		out[id] = rt.Place(k)
	}
	return out, errors.Join(errs...)
}

// loadCounts is what one cluster holds after loading: the check run after
// the load, and the placement line of the report.
type loadCounts struct {
	fanTeams, fanIncidents int
	teams                  int            // every team row
	requestTeams           map[string]int // by target
}

// counts returns what a cluster holding the teams for which holds is true
// contains after loadSQL(holds).
func (d *dataset) counts(holds func(team string) bool) loadCounts {
	c := loadCounts{requestTeams: map[string]int{}}
	for i, id := range d.fanout.teams {
		if !holds(id) {
			continue
		}
		c.fanTeams++
		for n := 1; n <= d.fanIncidents; n++ {
			if d.fanoutTeam(n) == i {
				c.fanIncidents++
			}
		}
	}
	for _, t := range d.targets {
		for _, id := range d.requests[t].teams {
			if holds(id) {
				c.requestTeams[t]++
			}
		}
	}
	c.teams = c.fanTeams
	for _, n := range c.requestTeams {
		c.teams += n
	}
	return c
}

// loadSQL returns the SQL that loads a cluster as the superuser, in one
// transaction: every organization and user (replicated tables: on every
// shard), the teams for which holds is true, their incidents, then
// ANALYZE. The one database holds every team; a shard the teams placed on
// it. Fan-out incidents are generated by the server (generate_series), so
// the statement stays small whatever their number.
func (d *dataset) loadSQL(holds func(team string) bool) string {
	var b strings.Builder
	b.WriteString("BEGIN;\n")

	sets := []teamSet{d.fanout}
	for _, t := range d.targets {
		sets = append(sets, d.requests[t])
	}
	var rows []string
	for _, s := range sets {
		rows = append(rows, fmt.Sprintf("('%s', '%s', '%s', true, 1000, 1000)", s.org, s.org, s.org))
	}
	fmt.Fprintf(&b, "INSERT INTO organizations (id, name, slug, is_active, max_teams, max_users_per_team) VALUES\n  %s;\n", strings.Join(rows, ",\n  "))

	rows = rows[:0]
	for _, s := range sets {
		for _, id := range s.teams {
			if holds(id) {
				rows = append(rows, fmt.Sprintf("('%s', '%s', '%s', '%s', '%s', true)", id, s.org, s.org, id, id))
			}
		}
	}
	if len(rows) > 0 {
		fmt.Fprintf(&b, "INSERT INTO teams (id, org_id, organization_id, name, slug, is_active) VALUES\n  %s;\n", strings.Join(rows, ",\n  "))
	}

	// users.team_id has no foreign key on a shard (03_sharded.sql), so a
	// user is loaded everywhere whichever shard its team is on.
	rows = rows[:0]
	for _, t := range d.targets {
		s := d.requests[t]
		rows = append(rows, fmt.Sprintf("('%s', '%s', '%s', '%s', '%s@bench.example', '%s', true, true, 'MEMBER')", s.user, s.org, s.org, s.teams[0], s.user, s.user))
	}
	if len(rows) > 0 {
		fmt.Fprintf(&b, "INSERT INTO users (id, org_id, organization_id, team_id, email, username, is_active, is_verified, role) VALUES\n  %s;\n", strings.Join(rows, ",\n  "))
	}

	rows = rows[:0]
	for i, id := range d.fanout.teams {
		if holds(id) {
			rows = append(rows, fmt.Sprintf("(%d, '%s'::uuid)", i, id))
		}
	}
	if len(rows) > 0 && d.fanIncidents > 0 {
		fmt.Fprintf(&b, `INSERT INTO incidents (id, org_id, organization_id, team_id, title, status, priority, version, created_at, updated_at)
SELECT md5('bench-fanout-incident-' || n)::uuid, '%s', '%s', t.id, 'fan-out incident ' || n, 'OPEN', 'MEDIUM', 1,
       timestamptz '%s' - n * interval '1 second', timestamptz '%s' - n * interval '1 second'
FROM generate_series(1, %d) AS n
JOIN (VALUES
  %s) AS t(k, id) ON t.k = n %% %d;
`, d.fanout.org, d.fanout.org, fanoutEpoch, fanoutEpoch, d.fanIncidents, strings.Join(rows, ",\n  "), len(d.fanout.teams))
	}

	rows = rows[:0]
	for _, t := range d.targets {
		s := d.requests[t]
		for _, id := range s.teams {
			if holds(id) {
				rows = append(rows, fmt.Sprintf("('%s'::uuid, '%s'::uuid, '%s'::uuid)", id, s.org, s.user))
			}
		}
	}
	if len(rows) > 0 {
		fmt.Fprintf(&b, `INSERT INTO incidents (id, org_id, organization_id, team_id, created_by, title, status, priority, version, created_at, updated_at)
SELECT md5('bench-request-incident-' || t.id || '-' || i)::uuid, t.org, t.org, t.id, t.usr, 'incident ' || i, 'OPEN', 'LOW', 1,
       now() - i * interval '1 minute', now() - i * interval '1 minute'
FROM (VALUES
  %s) AS t(id, org, usr)
CROSS JOIN generate_series(1, %d) AS i;
`, strings.Join(rows, ",\n  "), requestIncidentsPerTeam)
	}
	b.WriteString("COMMIT;\nANALYZE;\n")
	return b.String()
}

// checkSQL returns a query whose one-line answer ("teams|fan-out
// incidents") must equal c.want() on a cluster loaded with the same holds.
func (d *dataset) checkSQL() string {
	return fmt.Sprintf("SELECT (SELECT count(*) FROM teams), (SELECT count(*) FROM incidents WHERE org_id = '%s')", d.fanout.org)
}

func (c loadCounts) want() string { return fmt.Sprintf("%d|%d", c.teams, c.fanIncidents) }

// shardMapYAML returns deploy/shardmap/brownie.yaml (tables, key type,
// keyless policies, overrides) with its shards replaced by one shard per
// primary address, named shard-0, shard-1, … in hash order and without
// replicas, and checks that the result parses.
func shardMapYAML(primaries []string) ([]byte, *router.Map, error) {
	src := shardmap.Brownie
	start := bytes.Index(src, []byte("\nshards:\n"))
	end := bytes.Index(src, []byte("\ntables:\n"))
	if start < 0 || end < start {
		return nil, nil, errors.New("deploy/shardmap/brownie.yaml has no top-level shards: followed by tables:")
	}
	var b bytes.Buffer
	b.WriteString("# Written by internal/bench: deploy/shardmap/brownie.yaml with the benchmark's shards.\n")
	b.Write(src[:start])
	b.WriteString("\nshards:\n")
	for i, addr := range primaries {
		fmt.Fprintf(&b, "  - name: shard-%d\n    primary: %s\n", i, addr)
	}
	b.Write(src[end:])
	m, err := router.ParseMap(b.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("the benchmark's shard map: %w", err)
	}
	return b.Bytes(), m, nil
}
