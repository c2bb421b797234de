package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/brownie/brownie-sidecar/deploy/shardmap"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/router"
)

// The API replay test runs testdata/brownie_api_replay.py — the statements
// the Brownie FastAPI API sends, request by request, each request one
// transaction — against one plain database holding everything and
// through the sidecar on two shards with the shipped Brownie shard map,
// and requires the same transcript from both: rows, command tags and
// SQLSTATEs, statement by statement. It runs in the three driver modes the
// script has: psycopg 3 with its default prepare_threshold (named prepared
// statements once a statement is hot), psycopg 3 preparing every statement
// at once, and SQLAlchemy 1.4 on psycopg2 (literals in the SQL, simple
// protocol).

// replayModes are brownie_api_replay.py's driver modes, run in this order.
var replayModes = []string{"psycopg3", "psycopg3-prepare0", "sqlalchemy"}

// replayTimeZone is the startup option the API sends.
const replayTimeZone = "options='-c timezone=UTC'"

// requirePython fails the test unless /usr/bin/python3 imports every
// module; make deps installs them.
func requirePython(t *testing.T, modules ...string) {
	t.Helper()
	for _, m := range modules {
		if out, err := exec.Command("/usr/bin/python3", "-c", "import "+m).CombinedOutput(); err != nil {
			t.Fatalf("python module %s is missing for /usr/bin/python3 (make deps installs python3-psycopg, python3-psycopg2, python3-sqlalchemy and python3-alembic): %v\n%s", m, err, out)
		}
	}
}

// brownieMapFor returns deploy/shardmap/brownie.yaml with srv's servers in
// place of the development stack's: shard i's primary for
// 127.0.0.1:15432+10i and its replica, or none, for 127.0.0.1:15433+10i.
func brownieMapFor(t *testing.T, srv *pgtest.Server) string {
	t.Helper()
	text := string(shardmap.Brownie)
	if len(srv.Shards) != 2 {
		t.Fatalf("the Brownie shard map has two shards, the cluster %d", len(srv.Shards))
	}
	for i, sh := range srv.Shards {
		primary := fmt.Sprintf("primary: 127.0.0.1:%d", 15432+10*i)
		replicas := fmt.Sprintf("replicas: [127.0.0.1:%d]", 15433+10*i)
		if strings.Count(text, primary) != 1 || strings.Count(text, replicas) != 1 {
			t.Fatalf("deploy/shardmap/brownie.yaml no longer has shard-%d at %q and %q; update brownieMapFor", i, primary, replicas)
		}
		// \x00 stands for the host until every port is replaced, so that a
		// new port equal to a development one is not replaced again.
		text = strings.Replace(text, primary, fmt.Sprintf("primary: \x00%d", sh.Primary.Port()), 1)
		r := ""
		if sh.Replica != nil {
			r = fmt.Sprintf("\x00%d", sh.Replica.Port())
		}
		text = strings.Replace(text, replicas, "replicas: ["+r+"]", 1)
	}
	return strings.ReplaceAll(text, "\x00", "127.0.0.1:")
}

// brownieShards is a two-shard cluster with the Brownie schema and the
// sidecar routing over it with the shipped Brownie shard map, plus a router
// with the same map to predict placement.
type brownieShards struct {
	srv     *pgtest.Server
	sc      *sidecar
	rt      *router.Router
	mapFile string
}

// startBrownieShards starts two shards (each with a streaming replica when
// replicas is set), runs setup on each shard's primary in database
// brownie_metadata (when not empty), then the sidecar with the Brownie
// shard map in transaction mode, and waits until it is ready.
func startBrownieShards(t *testing.T, replicas bool, setup string) *brownieShards {
	t.Helper()
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Replica: replicas, Shards: 2})
	ctx := context.Background()
	for i, sh := range srv.Shards {
		if setup != "" {
			if _, err := sh.Primary.Exec(ctx, "brownie_metadata", setup); err != nil {
				t.Fatalf("shard-%d setup: %v", i, err)
			}
		}
		if sh.Replica != nil {
			if err := sh.Replica.WaitReplayed(ctx, sh.Primary); err != nil {
				t.Fatal(err)
			}
		}
	}
	text := brownieMapFor(t, srv)
	mapFile := filepath.Join(t.TempDir(), "shardmap.yaml")
	writeFileAtomic(t, mapFile, text)
	b := &brownieShards{srv: srv, mapFile: mapFile, rt: testRouter(t, text)}
	b.sc = startSidecar(t, srv, map[string]string{
		"SHARD_MAP_FILE":        mapFile,
		"POOL_MODE":             "transaction",
		"POOL_SIZE":             "6",
		"LOG_LEVEL":             "info",
		"HEALTH_CHECK_INTERVAL": "100ms",
		"HEALTH_CHECK_TIMEOUT":  "2s",
	})
	waitFor(t, 15*time.Second, "sidecar ready", func() bool {
		code, _ := b.sc.get(t, "/ready")
		return code == 200
	})
	return b
}

// onEveryShard runs sql on every shard's primary in brownie_metadata and
// returns the outputs in shard order.
func (b *brownieShards) onEveryShard(t *testing.T, sql string) []string {
	t.Helper()
	var outs []string
	for i, sh := range b.srv.Shards {
		out, err := sh.Primary.Exec(context.Background(), "brownie_metadata", sql)
		if err != nil {
			t.Fatalf("shard-%d: %s: %v", i, sql, err)
		}
		outs = append(outs, out)
	}
	return outs
}

// sameOnEveryShard checks that sql answers the same on every shard's
// primary, reporting the first differing line.
func (b *brownieShards) sameOnEveryShard(t *testing.T, what, sql string) {
	t.Helper()
	outs := b.onEveryShard(t, sql)
	for i := 1; i < len(outs); i++ {
		if outs[i] != outs[0] {
			t.Errorf("%s differ between shard-0 and shard-%d:\n%s", what, i, firstLineDifference("shard-0", outs[0], fmt.Sprintf("shard-%d", i), outs[i]))
		}
	}
}

// nothingPrepared waits until no shard primary holds a prepared
// transaction (a two-phase commit may finish its last parts just after it
// answered the client), and reports the ones left after 10s.
func (b *brownieShards) nothingPrepared(t *testing.T, after string) {
	t.Helper()
	const q = "SELECT coalesce(string_agg(gid || ' (' || age(now(), prepared)::text || ')', ', '), '') FROM pg_prepared_xacts"
	deadline := time.Now().Add(10 * time.Second)
	for {
		outs := b.onEveryShard(t, q)
		if slices.IndexFunc(outs, func(s string) bool { return s != "" }) < 0 {
			return
		}
		if time.Now().After(deadline) {
			for i, o := range outs {
				if o != "" {
					t.Errorf("shard-%d still holds prepared transactions 10s after %s: %s", i, after, o)
				}
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// firstLineDifference shows where two texts first differ, with a line of
// context before.
func firstLineDifference(nameA, a, nameB, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	i := 0
	for i < len(la) && i < len(lb) && la[i] == lb[i] {
		i++
	}
	line := func(l []string, n int) string {
		if n < len(l) {
			return l[n]
		}
		return "(end)"
	}
	var s strings.Builder
	fmt.Fprintf(&s, "  first difference at line %d (of %d and %d)\n", i+1, len(la), len(lb))
	if i > 0 {
		fmt.Fprintf(&s, "  both:   %s\n", clip(la[i-1], 300))
	}
	fmt.Fprintf(&s, "  %s: %s\n  %s: %s", nameA, clip(line(la, i), 300), nameB, clip(line(lb, i), 300))
	return s.String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// replaySpec is brownie_api_replay.py's SPEC argument.
type replaySpec struct {
	Seed   string   `json:"seed"`
	Prefix string   `json:"prefix"`
	Teams  []string `json:"teams"`
}

// replayEntry is one statement, or one transaction end, of a transcript.
type replayEntry struct {
	Label     string      `json:"label"`
	Rows      [][]*string `json:"rows"`
	Status    *string     `json:"status"`
	RowCount  *int64      `json:"rowcount"`
	Error     *string     `json:"error"`
	Message   *string     `json:"message"`
	Unordered bool        `json:"unordered"`
}

// replayRun is what one run of the script printed.
type replayRun struct {
	Mode       string        `json:"mode"`
	Prepared   int           `json:"prepared"`
	Transcript []replayEntry `json:"transcript"`
}

// outcome is what must be equal on both sides: the SQLSTATE of an error,
// or the command tag, row count and rows (sorted when the statement has no
// ORDER BY).
func (e replayEntry) outcome() string {
	if e.Error != nil {
		return "error " + *e.Error
	}
	rows := e.Rows
	if e.Unordered {
		rows = slices.Clone(rows)
		slices.SortFunc(rows, func(a, b []*string) int {
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			return bytes.Compare(ja, jb)
		})
	}
	j, _ := json.Marshal(rows)
	return fmt.Sprintf("status %s rowcount %s rows %s", deref(e.Status), derefInt(e.RowCount), j)
}

// short is one line saying what happened.
func (e replayEntry) short() string {
	switch {
	case e.Error != nil:
		return fmt.Sprintf("error %s: %s", *e.Error, clip(firstLine(deref(e.Message)), 160))
	case e.Status == nil && e.Rows == nil:
		return "ok"
	case e.Rows == nil:
		return deref(e.Status)
	default:
		return fmt.Sprintf("%s, %d rows", deref(e.Status), len(e.Rows))
	}
}

// long shows an entry in full for the first difference.
func (e replayEntry) long() string {
	var s strings.Builder
	s.WriteString(e.short())
	if e.Error != nil && e.Message != nil {
		for _, l := range strings.Split(*e.Message, "\n")[1:] {
			fmt.Fprintf(&s, "\n      %s", clip(l, 300))
		}
	}
	for i, r := range e.Rows {
		if i == 8 {
			fmt.Fprintf(&s, "\n      … %d more rows", len(e.Rows)-i)
			break
		}
		j, _ := json.Marshal(r)
		fmt.Fprintf(&s, "\n      %s", clip(string(j), 400))
	}
	return s.String()
}

func deref(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

func derefInt(n *int64) string {
	if n == nil {
		return "-"
	}
	return strconv.FormatInt(*n, 10)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// diffReplay compares two transcripts by label, in want's order. It
// returns "" when they agree, or the first difference in full followed by
// a list of every differing statement (at most 60).
func diffReplay(wantName string, want []replayEntry, gotName string, got []replayEntry) string {
	byLabel := make(map[string]replayEntry, len(got))
	for _, e := range got {
		byLabel[e.Label] = e
	}
	seen := make(map[string]bool, len(want))
	var first string
	var list []string
	for i, w := range want {
		seen[w.Label] = true
		g, ok := byLabel[w.Label]
		var gotShort string
		switch {
		case !ok:
			gotShort = "not run"
		case g.outcome() != w.outcome():
			gotShort = g.short()
		default:
			continue
		}
		if first == "" {
			gotLong := gotShort
			if ok {
				gotLong = g.long()
			}
			first = fmt.Sprintf("first difference at statement %d of %d, %q:\n  %s: %s\n  %s: %s",
				i+1, len(want), w.Label, wantName, w.long(), gotName, gotLong)
		}
		list = append(list, fmt.Sprintf("  %s\n      %s: %s\n      %s: %s", w.Label, wantName, w.short(), gotName, gotShort))
	}
	for _, g := range got {
		if !seen[g.Label] {
			list = append(list, fmt.Sprintf("  %s\n      %s: not run\n      %s: %s", g.Label, wantName, gotName, g.short()))
			if first == "" {
				first = fmt.Sprintf("%s ran %q, which %s did not", gotName, g.Label, wantName)
			}
		}
	}
	if first == "" {
		return ""
	}
	n := len(list)
	if n > 60 {
		list = append(list[:60], fmt.Sprintf("  … and %d more", n-60))
	}
	return fmt.Sprintf("%s\n%s%d of %d statements differ:\n%s", first, newErrors(gotName, want, got), n, len(want), strings.Join(list, "\n"))
}

// newErrors sums up the errors got has where want has none or another:
// one line per SQLSTATE and message, with how often and where first.
func newErrors(gotName string, want, got []replayEntry) string {
	wantErr := make(map[string]string, len(want))
	for _, w := range want {
		if w.Error != nil {
			wantErr[w.Label] = *w.Error
		}
	}
	type group struct {
		key, first string
		n          int
	}
	var groups []*group
	byKey := map[string]*group{}
	for _, g := range got {
		if g.Error == nil || wantErr[g.Label] == *g.Error {
			continue
		}
		key := *g.Error + " " + clip(firstLine(deref(g.Message)), 200)
		if byKey[key] == nil {
			byKey[key] = &group{key: key, first: g.Label}
			groups = append(groups, byKey[key])
		}
		byKey[key].n++
	}
	if len(groups) == 0 {
		return ""
	}
	var s strings.Builder
	fmt.Fprintf(&s, "errors only the %s gives:\n", gotName)
	for _, g := range groups {
		fmt.Fprintf(&s, "  %3d× %s\n        first at %s\n", g.n, g.key, g.first)
	}
	return s.String()
}

// runAPIReplay runs brownie_api_replay.py in mode against dsn.
func runAPIReplay(t *testing.T, mode, dsn string, spec replaySpec) replayRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	arg, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "testdata/brownie_api_replay.py", mode, dsn, string(arg))
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("brownie_api_replay.py %s: %v\n%s", mode, err, stderr.String())
	}
	var run replayRun
	if err := json.Unmarshal(stdout.Bytes(), &run); err != nil {
		t.Fatalf("brownie_api_replay.py %s printed no transcript: %v\n%s\n%s", mode, err, clip(stdout.String(), 2000), stderr.String())
	}
	if len(run.Transcript) == 0 {
		t.Fatalf("brownie_api_replay.py %s: empty transcript", mode)
	}
	return run
}

// replayTeams derives four team ids from seed, the first two placed on
// shard-0 and the last two on shard-1, the same on every run.
func replayTeams(t *testing.T, rt *router.Router, seed string) []string {
	t.Helper()
	var teams []string
	for i, shard := range []string{"shard-0", "shard-0", "shard-1", "shard-1"} {
		for n := 0; ; n++ {
			sum := sha256.Sum256(fmt.Appendf(nil, "%s/team/%d/%d", seed, i, n))
			u := pgtype.UUID{Valid: true}
			copy(u.Bytes[:], sum[:16])
			u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
			u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
			if shardOf(t, rt, u) == shard {
				teams = append(teams, uuidText(u))
				break
			}
		}
	}
	return teams
}

// replayExpectedErrors are the only statements of the script that fail on
// a plain database: the requests that lose a race for a unique key.
var replayExpectedErrors = map[string]string{
	"POST /teams/t2/incidents (duplicate key): insert duplicate incident":               "23505",
	"POST /organizations/org/users (duplicate e-mail): insert user with a taken e-mail": "23505",
}

// checkReplayReference checks the plain database's transcript: the only
// errors are the expected duplicate keys, and psycopg prepared statements.
func checkReplayReference(t *testing.T, run replayRun) {
	t.Helper()
	found := map[string]bool{}
	for _, e := range run.Transcript {
		if e.Error == nil {
			continue
		}
		_, what, _ := strings.Cut(e.Label, " ")
		if code, ok := replayExpectedErrors[what]; ok && code == *e.Error {
			found[what] = true
			continue
		}
		t.Errorf("the script fails on the plain database: %s: %s", e.Label, e.short())
	}
	for what, code := range replayExpectedErrors {
		if !found[what] {
			t.Errorf("the plain database did not fail %q with %s", what, code)
		}
	}
	if strings.HasPrefix(run.Mode, "psycopg3") && run.Prepared == 0 {
		t.Errorf("psycopg (%s) prepared no statement: the named prepared statements are not exercised", run.Mode)
	}
}

// TestBrownieAPIGivesTheSameAnswersOnTwoShardsAsOnOneDatabase replays the
// API's requests (signup spanning shards, teams on both shards, users
// moving between them, incidents, agent configs and stats by team, by id
// and organization-wide, a duplicate key rolled back) in each driver mode:
// twice on a plain database (the script is deterministic), then through
// the sidecar on two shards; the transcripts must be equal, the
// replicated tables identical on both shards and no transaction left
// prepared.
func TestBrownieAPIGivesTheSameAnswersOnTwoShardsAsOnOneDatabase(t *testing.T) {
	requirePython(t, "psycopg", "psycopg2", "sqlalchemy")
	ctx := context.Background()
	plain := pgtest.Start(t, pgtest.Options{Schema: true})
	// Two copies of the empty Brownie database: the reference run and the
	// determinism run. Each accumulates the modes' data, as the shards do.
	for _, db := range []string{"replay_reference", "replay_again"} {
		if _, err := plain.Primary.Exec(ctx, "postgres", fmt.Sprintf(`CREATE DATABASE %s TEMPLATE brownie_metadata OWNER "brownie-fastapi-server"`, db)); err != nil {
			t.Fatal(err)
		}
	}
	b := startBrownieShards(t, true, "")

	// Each driver mode through the transaction-mode sidecar, then psycopg
	// 3 through a session-mode sidecar on the same shards.
	type replayCase struct{ name, mode string }
	cases := make([]replayCase, 0, len(replayModes)+1)
	for _, mode := range replayModes {
		cases = append(cases, replayCase{mode, mode})
	}
	cases = append(cases, replayCase{"psycopg3-session-pool", "psycopg3"})
	for _, rc := range cases {
		t.Run(rc.name, func(t *testing.T) {
			mode := rc.mode
			spec := replaySpec{Seed: rc.name, Prefix: rc.name, Teams: replayTeams(t, b.rt, rc.name)}
			ref := runAPIReplay(t, mode, plain.DSN(plain.Primary, "replay_reference")+" "+replayTimeZone, spec)
			checkReplayReference(t, ref)
			again := runAPIReplay(t, mode, plain.DSN(plain.Primary, "replay_again")+" "+replayTimeZone, spec)
			if d := diffReplay("first run", ref.Transcript, "second run", again.Transcript); d != "" {
				t.Fatalf("the script is not deterministic on the plain database (%s):\n%s", mode, d)
			}

			sc := b.sc
			if rc.name != mode {
				sc = startSidecar(t, b.srv, map[string]string{
					"SHARD_MAP_FILE": b.mapFile, "POOL_MODE": "session", "LOG_LEVEL": "info",
					"HEALTH_CHECK_INTERVAL": "100ms", "HEALTH_CHECK_TIMEOUT": "2s",
				})
				waitFor(t, 15*time.Second, "session-mode sidecar ready", func() bool {
					code, _ := sc.get(t, "/ready")
					return code == 200
				})
			}
			got := runAPIReplay(t, mode, sc.dsn(replayTimeZone), spec)
			if d := diffReplay("plain database", ref.Transcript, "sidecar", got.Transcript); d != "" {
				t.Errorf("%s through the sidecar on two shards differs from the plain database:\n%s", rc.name, d)
			}
			b.sameOnEveryShard(t, "organizations", "SELECT * FROM organizations ORDER BY id")
			b.sameOnEveryShard(t, "users", "SELECT * FROM users ORDER BY id")
			b.sameOnEveryShard(t, "alembic_version", "SELECT * FROM alembic_version ORDER BY version_num")
			b.nothingPrepared(t, "the "+mode+" replay")
		})
	}
}
