package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// Driver conformance: sequences that drivers' own test suites send,
// through the sidecar, compared with what Postgres itself answers.

// wireConn is a raw protocol client over a connection pgconn
// established (TLS and startup done), for sending exact message
// sequences.
type wireConn struct {
	t  *testing.T
	hc *pgconn.HijackedConn
}

// dialWire connects with dsn and hands the connection over to raw
// protocol use.
func dialWire(t *testing.T, dsn string) *wireConn {
	t.Helper()
	pc, err := pgconn.Connect(ctx10(t), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &wireConn{t: t, hc: hc}
}

// round sends msgs (ending with Sync or a Query) and returns a summary of
// every message up to ReadyForQuery: the message type, and for errors
// their code, message and position, for rows their values, for
// completions their tags.
func (w *wireConn) round(msgs ...pgproto3.FrontendMessage) []string {
	w.t.Helper()
	fe := w.hc.Frontend
	for _, m := range msgs {
		if p, ok := m.(pause); ok {
			if err := fe.Flush(); err != nil {
				w.t.Fatalf("send: %v", err)
			}
			time.Sleep(time.Duration(p))
			continue
		}
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		w.t.Fatalf("send: %v", err)
	}
	_ = w.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			w.t.Fatalf("receive after %v: %v", out, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			out = append(out, fmt.Sprintf("Error %s %s %q position %d", m.Severity, m.Code, m.Message, m.Position))
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			out = append(out, "DataRow "+strings.Join(vals, ","))
		case *pgproto3.CommandComplete:
			out = append(out, "CommandComplete "+string(m.CommandTag))
		case *pgproto3.ReadyForQuery:
			return append(out, "ReadyForQuery "+string(m.TxStatus))
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
		default:
			out = append(out, strings.TrimPrefix(fmt.Sprintf("%T", msg), "*pgproto3."))
		}
	}
}

// pause in a round sends what precedes it, then waits that long.
type pause time.Duration

func (pause) Frontend()                         {}
func (pause) Decode([]byte) error               { return nil }
func (pause) Encode(dst []byte) ([]byte, error) { return dst, nil }

// statementSequences are protocol sequences whose answers a driver relies
// on, each a list of rounds. sessionOnly ones depend on the timing of
// the messages, which a Parse held between transactions does not keep
// (see README, known differences).
var statementSequences = []struct {
	name        string
	sessionOnly bool
	rounds      [][]pgproto3.FrontendMessage
}{
	{"a timeout between Parse and Describe ends the whole request", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Query{String: "SET statement_timeout = '100ms'"}},
		{&pgproto3.Parse{Name: "t1", Query: "select 1"}, pause(250 * time.Millisecond), &pgproto3.Describe{ObjectType: 'S', Name: "t1"},
			&pgproto3.Parse{Name: "t2", Query: "select 2"}, pause(250 * time.Millisecond), &pgproto3.Describe{ObjectType: 'S', Name: "t2"}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "SET statement_timeout = 0"}},
		{&pgproto3.Close{ObjectType: 'S', Name: "t1"}, &pgproto3.Close{ObjectType: 'S', Name: "t2"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "t2", Query: "select 2"}, &pgproto3.Bind{PreparedStatement: "t2"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"a syntax error is answered at the Parse", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Parse{Name: "s1", Query: "selec 1"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s1", Query: "select 1 from pg_class where"}, &pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "select 'a' + + from"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"a failed named Parse leaves no statement", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Parse{Name: "s2", Query: "select no_such_column"}, &pgproto3.Describe{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s2", Query: "select 2"}, &pgproto3.Describe{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"a name in use is refused with 42P05", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Parse{Name: "s3", Query: "select 3"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s3", Query: "select 'other'"}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s3"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s3", Query: "select 3"}, &pgproto3.Bind{PreparedStatement: "s3"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"Close of an unknown statement succeeds", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Close{ObjectType: 'S', Name: "never_prepared"}, &pgproto3.Sync{}},
		{&pgproto3.Close{ObjectType: 'S', Name: "never_prepared"}, &pgproto3.Parse{Name: "s4", Query: "select 4"}, &pgproto3.Close{ObjectType: 'S', Name: "s4"}, &pgproto3.Close{ObjectType: 'S', Name: "s4"}, &pgproto3.Sync{}},
	}},
	{"SQL DEALLOCATE drops a protocol statement", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Parse{Name: "s5", Query: "select 5"}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "DEALLOCATE s5"}},
		{&pgproto3.Bind{PreparedStatement: "s5"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s5", Query: "select 'five'"}, &pgproto3.Bind{PreparedStatement: "s5"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "DEALLOCATE ALL"}},
		{&pgproto3.Bind{PreparedStatement: "s5"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"a simple Query drops the unnamed statement", false, [][]pgproto3.FrontendMessage{
		{&pgproto3.Parse{Query: "select 6"}, &pgproto3.Sync{}},
		{&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "select 'between'"}},
		{&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
}

// TestStatementSequencesAreAnsweredAsPostgresAnswersThem runs each
// sequence straight against Postgres and through the sidecar in both pool
// modes, and compares the answers message by message.
func TestStatementSequencesAreAnsweredAsPostgresAnswersThem(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	direct := srv.DSN(srv.Primary, pgcluster.BrownieDatabase)
	session := startSidecar(t, srv, map[string]string{"LOG_LEVEL": "info"})
	txn := startSidecar(t, srv, txnEnv(1))
	for _, seq := range statementSequences {
		t.Run(seq.name, func(t *testing.T) {
			var want [][]string
			pg := dialWire(t, direct)
			for _, r := range seq.rounds {
				want = append(want, pg.round(r...))
			}
			for _, mode := range []struct {
				name string
				sc   *sidecar
			}{{"session", session}, {"transaction", txn}} {
				if seq.sessionOnly && mode.sc == txn {
					continue
				}
				w := dialWire(t, mode.sc.dsn(""))
				for i, r := range seq.rounds {
					if got := w.round(r...); !slicesEqual(got, want[i]) {
						t.Errorf("%s mode, round %d:\n got  %q\n want %q (Postgres)", mode.name, i+1, got, want[i])
					}
				}
			}
		})
	}
	noQuietWaitRescued(t, session)
	noQuietWaitRescued(t, txn)
}

// noQuietWaitRescued fails the test when the idle sweep had to end a
// relay's wait after a quiet answer (proxy/quiet.go): with no message sent
// unasked by the server (no LISTEN, no terminated backend), that is a wait
// that skipped its read while an answer it should have seen had come.
func noQuietWaitRescued(t *testing.T, sc *sidecar) {
	t.Helper()
	const series = "brownie_sidecar_quiet_waits_rescued_total"
	_, body := sc.get(t, "/metrics")
	if n, ok := metricValue(body, series); !ok || n != 0 {
		t.Errorf("%s = %v (found %v), want 0", series, n, ok)
	}
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPreparedStatementsSurviveSchemaChangesByOtherClients: after another
// client drops and recreates a type, or changes a table's columns (a
// migration), a client preparing a statement over them gets a statement
// of the new schema, never one of the old schema that another client
// prepared on the same upstream (XX000 "cache lookup failed for type", or
// 0A000 "cached plan must not change result type" where Postgres gives
// none). A client that prepared before the change gets Postgres's 0A000,
// and preparing again recovers, as from Postgres.
func TestPreparedStatementsSurviveSchemaChangesByOtherClients(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(1)) // one upstream: every client shares its statements
	ctx := ctx10(t)
	a, b, c := sc.connect(t, "").PgConn(), sc.connect(t, "").PgConn(), sc.connect(t, "").PgConn()
	exec := func(pc *pgconn.PgConn, sql string) {
		t.Helper()
		if _, err := pc.Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	prepareRun := func(pc *pgconn.PgConn, name, sql string, args ...string) (*pgconn.Result, error) {
		t.Helper()
		sd, err := pc.Prepare(ctx, name, sql, nil)
		if err != nil {
			return nil, err
		}
		params := make([][]byte, len(args))
		for i, v := range args {
			params[i] = []byte(v)
		}
		r := pc.ExecPrepared(ctx, sd.Name, params, nil, nil).Read()
		return r, r.Err
	}

	exec(a, "CREATE TYPE mood AS ENUM ('sad', 'happy')")
	if _, err := prepareRun(a, "m", "SELECT $1::mood", "happy"); err != nil {
		t.Fatal(err)
	}
	exec(b, "DROP TYPE mood")
	exec(b, "CREATE TYPE mood AS ENUM ('calm', 'angry')")
	if r, err := prepareRun(c, "m", "SELECT $1::mood", "calm"); err != nil || string(r.Rows[0][0]) != "calm" {
		t.Fatalf("a statement prepared after the type was recreated: %v (want the new type's value)", err)
	}

	exec(a, "CREATE TABLE migrated (id int)")
	exec(a, "INSERT INTO migrated VALUES (1)")
	if _, err := prepareRun(a, "q", "SELECT * FROM migrated"); err != nil {
		t.Fatal(err)
	}
	exec(b, "ALTER TABLE migrated ADD COLUMN note text DEFAULT 'x'")
	r, err := prepareRun(c, "q", "SELECT * FROM migrated")
	if err != nil || len(r.FieldDescriptions) != 2 {
		t.Fatalf("a statement prepared after the table changed: %v (want its 2 columns)", err)
	}
	// The client that prepared before the change gets what Postgres gives
	// it, then recovers by preparing again.
	res := a.ExecPrepared(ctx, "q", nil, nil, nil).Read()
	if code := pgErrCode(res.Err); code != "0A000" {
		t.Fatalf("the statement prepared before the change: %v, want 0A000 as from Postgres", res.Err)
	}
	if err := a.Deallocate(ctx, "q"); err != nil {
		t.Fatal(err)
	}
	if r, err := prepareRun(a, "q", "SELECT * FROM migrated"); err != nil || len(r.FieldDescriptions) != 2 {
		t.Fatalf("preparing again after 0A000: %v", err)
	}
}

// TestAPreparedStatementKeepsItsResultColumnsOnEveryUpstream: a client's
// statement prepared before a schema change altered its result columns
// fails with Postgres's 0A000 "cached plan must not change result type"
// on whichever upstream runs it, also where the sidecar prepares it
// afresh against the new schema (where, bound as the client built the
// Bind, it would return rows of other columns, or fail with 08P01). A
// statement the change left alone runs there as before, a failed one
// aborts the client's transaction as in Postgres, and preparing it again
// recovers.
func TestAPreparedStatementKeepsItsResultColumnsOnEveryUpstream(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2))
	ctx := ctx10(t)
	two := newTwoUpstreams(t, ctx, sc)
	x, h1, h2 := two.x, two.h1, two.h2
	exec, pidOf := two.exec, two.pidOf
	exec(x, "CREATE TABLE reshaped (id int, dropped int, kept text); INSERT INTO reshaped VALUES (1, 2, 'k')")
	exec(x, "CREATE TABLE untouched (id int); INSERT INTO untouched VALUES (7)")
	exec(x, "CREATE TABLE gone (id int)")
	stmts := map[string]string{"s": "SELECT * FROM reshaped WHERE id = $1", "u": "SELECT * FROM untouched",
		"v": "SELECT id FROM untouched", "g": "SELECT * FROM gone", "f": `FETCH ALL IN "c"`}
	run := func(name string, formats []int16) *pgconn.ResultReader {
		var params [][]byte
		if name == "s" {
			params = [][]byte{[]byte("1")}
		}
		return x.ExecPrepared(ctx, name, params, nil, formats)
	}
	// The statements are prepared and run in one transaction, so on one
	// upstream: it alone holds them, as prepared under the old schema.
	held := pidOf(x, "BEGIN; SELECT pg_backend_pid()")
	for name, sql := range stmts {
		if _, err := x.Prepare(ctx, name, sql, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"s", "u", "v", "g"} {
		want := 1
		if name == "g" {
			want = 0 // an empty table
		}
		if r := run(name, nil).Read(); r.Err != nil || len(r.Rows) != want {
			t.Fatalf("%s before the change: %v", name, r.Err)
		}
	}
	exec(x, `DECLARE "c" CURSOR FOR SELECT 1`)
	if r := run("f", nil).Read(); r.Err != nil || len(r.FieldDescriptions) != 1 {
		t.Fatalf("f on a cursor of one column: %v", r.Err)
	}
	exec(x, "COMMIT")
	exec(h1, "ALTER TABLE reshaped DROP COLUMN dropped")
	exec(h1, "DROP TABLE gone")

	// x runs them on the other upstream, where they are prepared afresh.
	two.freeOnlyOtherThan(held)
	for _, formats := range [][]int16{nil, {0, 0, 0}} {
		r := run("s", formats).Read()
		var pe *pgconn.PgError
		if !errors.As(r.Err, &pe) || pe.Code != "0A000" || pe.Message != "cached plan must not change result type" || pe.Where != "" {
			t.Fatalf("s with result formats %v on a fresh upstream: %v, %d columns; want 0A000 cached plan must not change result type", formats, r.Err, len(r.FieldDescriptions))
		}
	}
	// Counted as the sidecar's errors, not as the server's answer to the
	// failing Parse standing in.
	_, metrics := sc.get(t, "/metrics")
	if v, _ := metricValue(metrics, `brownie_sidecar_errors_total{class="0A",source="sidecar"}`); v != 2 {
		t.Errorf("sidecar errors of class 0A: %v, want 2", v)
	}
	if v, ok := metricValue(metrics, `brownie_sidecar_errors_total{class="42",source="upstream"}`); ok && v != 0 {
		t.Errorf("upstream errors of class 42: %v, want none", v)
	}
	// A statement whose table went fails as in Postgres, and the
	// statements after it up to the Sync are skipped, as they would be.
	b := &pgconn.Batch{}
	b.ExecPrepared("g", nil, nil, nil)
	b.ExecPrepared("v", nil, nil, nil)
	if _, err := x.ExecBatch(ctx, b).ReadAll(); pgErrCode(err) != "42P01" {
		t.Fatalf("g, whose table was dropped, then v, on a fresh upstream: %v, want 42P01", err)
	}
	// A FETCH's columns are the cursor's, whatever it described when
	// prepared, on any upstream.
	exec(x, `BEGIN; DECLARE "c" CURSOR FOR SELECT 1, 'two'`)
	if r := run("f", nil).Read(); r.Err != nil || len(r.Rows) != 1 || len(r.Rows[0]) != 2 {
		t.Fatalf("f on a cursor of two columns: %v %q", r.Err, r.Rows)
	}
	exec(x, "ROLLBACK")
	if r := run("u", nil).Read(); r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != "7" {
		t.Fatalf("u, whose table did not change, on a fresh upstream: %v %q", r.Err, r.Rows)
	}
	// Postgres fails a Describe of the statement too (after its
	// ParameterDescription; the sidecar sends none): no description of
	// the new columns reaches the client.
	x.Frontend().Send(&pgproto3.Describe{ObjectType: 'S', Name: "s"})
	x.Frontend().Send(&pgproto3.Sync{})
	if err := x.Frontend().Flush(); err != nil {
		t.Fatal(err)
	}
	var described []string
	failed := false
	for {
		msg, err := x.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			failed = failed || m.Code == "0A000" && m.Message == "cached plan must not change result type"
			described = append(described, m.Code+" "+m.Message)
		case *pgproto3.ParameterDescription:
		case *pgproto3.ReadyForQuery:
		default:
			described = append(described, fmt.Sprintf("%T", msg))
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if !failed || len(described) != 1 {
		t.Fatalf("Describe of s: %q, want the 0A000 cached plan must not change result type and nothing else", described)
	}
	if got := pidOf(x, "SELECT pg_backend_pid()"); got == held {
		t.Fatalf("x ran on %s, the upstream holding its statements, not on a fresh one", got)
	}
	// As in Postgres, the error aborts the transaction it happens in.
	exec(x, "BEGIN")
	if err := run("s", nil).Read().Err; pgErrCode(err) != "0A000" {
		t.Fatalf("s in a transaction: %v", err)
	}
	if _, err := x.Exec(ctx, "SELECT 1").ReadAll(); pgErrCode(err) != "25P02" {
		t.Fatalf("a statement after the failed one: %v, want 25P02", err)
	}
	exec(x, "ROLLBACK")
	// Preparing it again recovers.
	if err := x.Deallocate(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := x.Prepare(ctx, "s", "SELECT * FROM reshaped WHERE id = $1", nil); err != nil {
		t.Fatal(err)
	}
	if r := run("s", []int16{0, 0}).Read(); r.Err != nil || len(r.Rows) != 1 || len(r.Rows[0]) != 2 {
		t.Fatalf("s prepared again: %v %q", r.Err, r.Rows)
	}
	exec(h1, "ROLLBACK")
	exec(h2, "ROLLBACK")
}

// TestAStatementWhoseColumnsChangedOnTheServerDirectlyFailsFromItsNextRun:
// a schema change made on the server itself, not through the sidecar, is
// found by the Describe the sidecar sends when it prepares a statement
// afresh. That run goes as the client built it; the statement's later
// runs fail with 0A000 as in Postgres, and a new schema generation starts.
func TestAStatementWhoseColumnsChangedOnTheServerDirectlyFailsFromItsNextRun(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2))
	ctx := ctx10(t)
	two := newTwoUpstreams(t, ctx, sc)
	two.exec(two.x, "CREATE TABLE widened (id int); INSERT INTO widened VALUES (1)")
	held := two.pidOf(two.x, "BEGIN; SELECT pg_backend_pid()") // w is prepared on this upstream alone
	if _, err := two.x.Prepare(ctx, "w", "SELECT * FROM widened", nil); err != nil {
		t.Fatal(err)
	}
	if r := two.x.ExecPrepared(ctx, "w", nil, nil, nil).Read(); r.Err != nil || len(r.Rows) != 1 {
		t.Fatalf("w before the change: %v", r.Err)
	}
	two.exec(two.x, "COMMIT")
	changes := func() float64 {
		_, body := sc.get(t, "/metrics")
		v, ok := metricValue(body, "brownie_sidecar_schema_changes_total")
		if !ok {
			t.Fatal("no brownie_sidecar_schema_changes_total")
		}
		return v
	}
	before := changes()
	if _, err := srv.Primary.Exec(ctx, "brownie_metadata", "ALTER TABLE widened ADD COLUMN extra int"); err != nil {
		t.Fatal(err)
	}
	two.freeOnlyOtherThan(held)
	if r := two.x.ExecPrepared(ctx, "w", nil, nil, nil).Read(); r.Err != nil || len(r.Rows) != 1 || len(r.Rows[0]) != 2 {
		t.Fatalf("w's first run after the change, on a fresh upstream: %v %q; want it to go as built, returning the new columns", r.Err, r.Rows)
	}
	for range 2 {
		if err := two.x.ExecPrepared(ctx, "w", nil, nil, nil).Read().Err; pgErrCode(err) != "0A000" {
			t.Fatalf("w's next run: %v, want 0A000", err)
		}
	}
	if after := changes(); after <= before {
		t.Fatalf("schema changes %v before, %v after: the change found was not counted", before, after)
	}
	two.exec(two.h1, "ROLLBACK")
	two.exec(two.h2, "ROLLBACK")
}

// twoUpstreams is a client x and two helpers h1 and h2 of a sidecar in
// transaction mode with a pool of two, for tests choosing which upstream
// x's next transaction runs on.
type twoUpstreams struct {
	t         *testing.T
	ctx       context.Context
	x, h1, h2 *pgconn.PgConn
}

func newTwoUpstreams(t *testing.T, ctx context.Context, sc *sidecar) *twoUpstreams {
	return &twoUpstreams{t: t, ctx: ctx, x: sc.connect(t, "").PgConn(), h1: sc.connect(t, "").PgConn(), h2: sc.connect(t, "").PgConn()}
}

func (u *twoUpstreams) exec(pc *pgconn.PgConn, sql string) []*pgconn.Result {
	u.t.Helper()
	rs, err := pc.Exec(u.ctx, sql).ReadAll()
	if err != nil {
		u.t.Fatalf("%s: %v", sql, err)
	}
	return rs
}

// pidOf runs sql, whose last result is one value, and returns it.
func (u *twoUpstreams) pidOf(pc *pgconn.PgConn, sql string) string {
	u.t.Helper()
	rs := u.exec(pc, sql)
	return string(rs[len(rs)-1].Rows[0][0])
}

// freeOnlyOtherThan has h1 and h2 hold both upstreams in transactions,
// then lets go of the one whose backend is not pid: x's next transaction
// runs there. The other stays held until the test rolls it back.
func (u *twoUpstreams) freeOnlyOtherThan(pid string) {
	u.t.Helper()
	p1 := u.pidOf(u.h1, "BEGIN; SELECT pg_backend_pid()")
	p2 := u.pidOf(u.h2, "BEGIN; SELECT pg_backend_pid()")
	switch pid {
	case p1:
		u.exec(u.h2, "COMMIT")
	case p2:
		u.exec(u.h1, "COMMIT")
	default:
		u.t.Fatalf("upstreams %s and %s, neither is %s", p1, p2, pid)
	}
}

// TestOtherClientsStatementsSurviveAClientsQueriesAndDiscards: in
// transaction mode one upstream serves many clients; a client's simple
// queries, DEALLOCATE ALL and DISCARD ALL affect only its own statements,
// and a client's unnamed statement lasts until it replaces it.
func TestOtherClientsStatementsSurviveAClientsQueriesAndDiscards(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(1))
	a := dialWire(t, sc.dsn(""))
	b := sc.connect(t, "").PgConn()
	ctx := ctx10(t)
	if got := a.round(&pgproto3.Parse{Query: "select 'unnamed'"}, &pgproto3.Parse{Name: "named", Query: "select 'named'"}, &pgproto3.Sync{}); len(got) != 3 {
		t.Fatalf("prepare: %q", got)
	}
	for _, sql := range []string{"SELECT 1", "DEALLOCATE ALL", "DISCARD ALL"} {
		if _, err := b.Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("another client's %s: %v", sql, err)
		}
		for _, stmt := range []string{"", "named"} {
			got := a.round(&pgproto3.Bind{PreparedStatement: stmt}, &pgproto3.Execute{}, &pgproto3.Sync{})
			want := []string{"BindComplete", "DataRow " + map[string]string{"": "unnamed", "named": "named"}[stmt], "CommandComplete SELECT 1", "ReadyForQuery I"}
			if !slicesEqual(got, want) {
				t.Fatalf("statement %q after another client's %s: %q, want %q", stmt, sql, got, want)
			}
		}
	}
}

// TestAnUpstreamThatDiesGivesItsClientExactlyOneError: a backend
// terminated under a client gives it the server's own FATAL 57P01 and
// nothing more, in both modes; a backend that dies unseen (killed with
// the sidecar's connection idle in the pool) gives 08006, once.
func TestAnUpstreamThatDiesGivesItsClientExactlyOneError(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	for _, mode := range []struct {
		name string
		env  map[string]string
	}{
		{"session", map[string]string{"LOG_LEVEL": "info"}},
		{"transaction", txnEnv(1, "POOL_CHECK_DELAY", "1h")},
	} {
		t.Run(mode.name, func(t *testing.T) {
			sc := startSidecar(t, srv, mode.env)
			w := dialWire(t, sc.dsn(""))
			got := w.round(&pgproto3.Query{String: "BEGIN; SELECT pg_backend_pid()"})
			if len(got) < 3 || !strings.HasPrefix(got[2], "DataRow ") {
				t.Fatalf("backend pid: %q", got)
			}
			pid := strings.TrimPrefix(got[2], "DataRow ")
			if _, err := srv.Primary.Exec(ctx10(t), "postgres", "SELECT pg_terminate_backend("+pid+")"); err != nil {
				t.Fatal(err)
			}
			w.hc.Frontend.Send(&pgproto3.Query{String: "SELECT 1"})
			_ = w.hc.Frontend.Flush() // may fail: the sidecar may have closed already
			errs := w.errorsUntilClosed()
			if len(errs) != 1 || errs[0] != "FATAL 57P01" {
				t.Fatalf("errors before the connection closed: %q, want exactly the server's FATAL 57P01", errs)
			}
		})
	}
}

// errorsUntilClosed reads until the connection closes and returns the
// severity and code of every ErrorResponse.
func (w *wireConn) errorsUntilClosed() []string {
	w.t.Helper()
	_ = w.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var errs []string
	for {
		msg, err := w.hc.Frontend.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err) {
				return errs
			}
			w.t.Fatalf("after %q: %v", errs, err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			errs = append(errs, e.Severity+" "+e.Code)
		}
	}
}

// TestACancelNeverCancelsAnotherClientsStatement: clients racing cancels
// against short statements on three shared upstreams; a statement is only
// ever cancelled by its own client, and a cancel that has returned never
// cancels the client's next statement.
func TestACancelNeverCancelsAnotherClientsStatement(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(3))
	const clients, rounds = 8, 20
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		foreign []string
		own     int
	)
	for i := range clients {
		pc := sc.connect(t, "").PgConn()
		cancels := i%2 == 0 // half the clients never cancel
		wg.Go(func() {
			ctx := context.Background()
			for r := range rounds {
				done := make(chan struct{})
				if cancels {
					go func() {
						defer close(done)
						time.Sleep(time.Duration(rand.IntN(40000)) * time.Microsecond)
						_ = pc.CancelRequest(ctx)
					}()
				} else {
					close(done)
				}
				_, err := pc.Exec(ctx, "SELECT pg_sleep(0.025)").ReadAll()
				<-done // the cancel returned: it is delivered or dropped
				mu.Lock()
				switch code := pgErrCode(err); {
				case code == "57014" && cancels:
					own++
				case err != nil:
					foreign = append(foreign, fmt.Sprintf("client %d round %d: %v", i, r, err))
				}
				mu.Unlock()
				// The cancel has returned: it must not touch what follows.
				if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
					mu.Lock()
					foreign = append(foreign, fmt.Sprintf("client %d round %d, after its cancel returned: %v", i, r, err))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if len(foreign) > 0 {
		t.Fatalf("%d statements cancelled by no cancel of their own client:\n%s", len(foreign), strings.Join(foreign, "\n"))
	}
	if own == 0 {
		t.Fatal("no cancel took effect: the race was not exercised")
	}
	_, body := sc.get(t, "/metrics")
	counts := map[string]float64{}
	for _, outcome := range []string{"forwarded", "queued", "too_late", "idle"} {
		counts[outcome], _ = metricValue(body, `brownie_sidecar_cancel_requests_total{result="`+outcome+`"}`)
	}
	t.Logf("%d statements cancelled by their own client; cancels by outcome: %v", own, counts)
	if counts["forwarded"] == 0 {
		t.Error("no cancel was forwarded to a running statement: the race was not exercised")
	}
}

// TestACancelledQueuedRequestNeverRuns: a request waiting for an upstream
// connection is cancelled there (57014 at once) and never reaches a
// server.
func TestACancelledQueuedRequestNeverRuns(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(1, "POOL_ACQUIRE_TIMEOUT", "30s"))
	ctx := ctx10(t)
	holder := sc.connect(t, "").PgConn()
	waiter := sc.connect(t, "").PgConn() // connected first: the greeting needs a connection too
	if _, err := holder.Exec(ctx, "CREATE TABLE queued_cancel (n int); BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(context.Background(), "INSERT INTO queued_cancel VALUES (1)").ReadAll()
		errc <- err
	}()
	waitFor(t, 10*time.Second, "the request to wait for the pool", func() bool {
		_, body := sc.get(t, "/status")
		return strings.Contains(strings.ReplaceAll(body, " ", ""), `"waiting":1`)
	})
	if err := waiter.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if pgErrCode(err) != "57014" {
			t.Fatalf("the cancelled queued request: %v, want 57014", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the queued request was not cancelled")
	}
	if _, err := holder.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatalf("the client after its cancelled request: %v", err)
	}
	out, err := srv.Primary.Exec(ctx, pgcluster.BrownieDatabase, "SELECT count(*) FROM queued_cancel")
	if err != nil || out != "0" {
		t.Fatalf("rows of the cancelled request: %q %v, want none", out, err)
	}
	_, body := sc.get(t, "/metrics")
	if v, _ := metricValue(body, `brownie_sidecar_cancel_requests_total{result="queued"}`); v != 1 {
		t.Errorf("queued cancels counted: %v, want 1", v)
	}
}

// TestANotificationNamesThePidItsSenderWasGiven: between two clients of
// one sidecar, a notification carries the pid the notifying client was
// given (its BackendKeyData), as it would from Postgres.
func TestANotificationNamesThePidItsSenderWasGiven(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2))
	ctx := ctx10(t)
	sender := sc.connect(t, "").PgConn()
	got := make(chan uint32, 1)
	listener2 := dialWire(t, sc.dsn(""))
	listener2.round(&pgproto3.Query{String: "LISTEN drivers2"})
	if _, err := sender.Exec(ctx, "NOTIFY drivers2, 'again'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_ = listener2.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	go func() {
		for {
			msg, err := listener2.hc.Frontend.Receive()
			if err != nil {
				close(got)
				return
			}
			if n, ok := msg.(*pgproto3.NotificationResponse); ok {
				got <- n.PID
				return
			}
		}
	}()
	if pid, ok := <-got; !ok || pid != sender.PID() {
		t.Fatalf("notification from pid %d, want %d (the sender's BackendKeyData)", pid, sender.PID())
	}
}
