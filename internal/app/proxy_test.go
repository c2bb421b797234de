package app

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

func TestQueriesRunThroughTheSidecarOnCertificateAuthenticatedPostgres(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	conn := sc.connect(t, "options='-c timezone=UTC'")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var user, tz, ssl string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_setting('TimeZone'), (SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid())").Scan(&user, &tz, &ssl); err != nil {
		t.Fatal(err)
	}
	if user != "brownie-fastapi-server" || tz != "UTC" || ssl != "true" {
		t.Fatalf("got user %q timezone %q ssl %q", user, tz, ssl)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1", "incidents").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("incidents table visible %d times", n)
	}
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestExtendedProtocolPreparedStatementsAndPipelinesWork(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	conn := sc.connect(t, "") // pgx default: named prepared statements, binary formats
	ctx := ctx10(t)
	for i := range 20 {
		var got int64
		var id uuid16
		if err := conn.QueryRow(ctx, "SELECT $1::int8 * 2, $2::uuid", int64(i), "6ba7b810-9dad-11d1-80b4-00c04fd430c8").Scan(&got, &id); err != nil {
			t.Fatal(err)
		}
		if got != int64(i*2) {
			t.Fatalf("got %d want %d", got, i*2)
		}
	}
	batch := &pgx.Batch{}
	for i := range 50 {
		batch.Queue("SELECT $1::int", i)
	}
	br := conn.SendBatch(ctx, batch)
	for i := range 50 {
		var got int
		if err := br.QueryRow().Scan(&got); err != nil || got != i {
			t.Fatalf("batch row %d: %v %d", i, err, got)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	// An error inside a transaction is reported and the transaction rolls back.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1/0"); pgErrCode(err) != "22012" {
		t.Fatalf("want division_by_zero, got %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

type uuid16 [16]byte

func (u *uuid16) ScanUUID(v pgtype.UUID) error { *u = v.Bytes; return nil }

func TestCopyInAndOutRelayThroughTheSidecar(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	conn := sc.connect(t, "")
	ctx := ctx10(t)
	if _, err := conn.Exec(ctx, "CREATE TABLE copytest (id int, note text)"); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 20000)
	for i := range rows {
		rows[i] = []any{i, strings.Repeat("x", i%100)}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"copytest"}, []string{"id", "note"}, pgx.CopyFromRows(rows))
	if err != nil || n != int64(len(rows)) {
		t.Fatalf("copy from: %d %v", n, err)
	}
	var buf bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id, note FROM copytest ORDER BY id) TO STDOUT")
	if err != nil || tag.RowsAffected() != int64(len(rows)) {
		t.Fatalf("copy to: %v %v", tag, err)
	}
	if lines := strings.Count(buf.String(), "\n"); lines != len(rows) {
		t.Fatalf("copied out %d lines", lines)
	}
	// psql's \copy uses COPY FROM STDIN in the simple protocol.
	out := psql(t, sc, `\copy copytest from stdin`+"\n1000000\tfrom psql\n\\.\nSELECT note FROM copytest WHERE id = 1000000;")
	if !strings.Contains(out, "from psql") {
		t.Fatalf("psql \\copy result: %s", out)
	}
}

// psql runs script through the sidecar's Unix socket with psql and returns
// its output.
func psql(t *testing.T, sc *sidecar, script string) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(sc.addr)
	cmd := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", sc.sockDir, "-p", port,
		"-U", "brownie-fastapi-server", "-d", "brownie_metadata", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	return string(out)
}

func TestCancelOfPgSleepReachesTheUpstreamBackend(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	conn := sc.connect(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
	if err == nil {
		t.Fatal("pg_sleep(30) was not cancelled")
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("cancel took %s", elapsed)
	}
	// pgx closes a connection whose query was interrupted by its context;
	// prove the cancel reached Postgres: no pg_sleep is left running.
	check := sc.connect(t, "")
	waitFor(t, 5*time.Second, "pg_sleep to stop upstream", func() bool {
		var running int
		_ = check.QueryRow(ctx10(t), "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'").Scan(&running)
		return running == 0
	})
	// A cancel through pgconn's own API on a live connection yields 57014.
	c2 := sc.connect(t, "")
	errc := make(chan error, 1)
	go func() {
		_, err := c2.Exec(context.Background(), "SELECT pg_sleep(30)")
		errc <- err
	}()
	waitFor(t, 5*time.Second, "pg_sleep to start", func() bool {
		var running int
		_ = check.QueryRow(ctx10(t), "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'").Scan(&running)
		return running == 1
	})
	if err := c2.PgConn().CancelRequest(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if pgErrCode(err) != "57014" {
			t.Fatalf("want 57014 query_canceled, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("query was not cancelled")
	}
}

func TestListenNotifyIsRelayed(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	listener := sc.connect(t, "")
	notifier := sc.connect(t, "")
	ctx := ctx10(t)
	if _, err := listener.Exec(ctx, "LISTEN incidents"); err != nil {
		t.Fatal(err)
	}
	if _, err := notifier.Exec(ctx, "SELECT pg_notify('incidents', 'team-42 opened')"); err != nil {
		t.Fatal(err)
	}
	n, err := listener.WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != "incidents" || n.Payload != "team-42 opened" {
		t.Fatalf("got %+v", n)
	}
}

func TestA64MiBValueRoundTrips(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	conn := sc.connect(t, "")
	ctx := ctx10(t)
	big := bytes.Repeat([]byte("brownie!"), 8<<20) // 64 MiB
	if _, err := conn.Exec(ctx, "CREATE TABLE blobs (b bytea)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO blobs VALUES ($1)", big); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := conn.QueryRow(ctx, "SELECT b FROM blobs").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("got %d bytes back, want %d identical", len(got), len(big))
	}
	var textLen int
	if err := conn.QueryRow(ctx, "SELECT length(encode(b, 'escape')) FROM blobs").Scan(&textLen); err != nil || textLen != len(big) {
		t.Fatalf("server-side length %d %v", textLen, err)
	}
}

// rawKill closes the TCP connection under a pgx conn without Terminate, as
// a crashed client would.
func rawKill(conn *pgx.Conn) { _ = conn.PgConn().Conn().Close() }

func TestAClientKilledInsideATransactionNeverLeavesADirtyUpstream(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"POOL_SIZE": "1"})
	ctx := ctx10(t)
	setup := sc.connect(t, "")
	if _, err := setup.Exec(ctx, "CREATE TABLE killed (v text)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	t.Run("idle in transaction: rolled back, reset and reused", func(t *testing.T) {
		a := sc.connect(t, "")
		var pidA int
		if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidA); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"BEGIN", "INSERT INTO killed VALUES ('uncommitted')", "SET search_path = pg_catalog", "SET application_name = 'dirty'"} {
			if _, err := a.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		rawKill(a)
		b := sc.connect(t, "") // POOL_SIZE=1: must get the same upstream once it is clean
		var pidB, rows int
		var app, path string
		if err := b.QueryRow(ctx, "SELECT pg_backend_pid(), (SELECT count(*) FROM public.killed), current_setting('application_name'), current_setting('search_path')").Scan(&pidB, &rows, &app, &path); err != nil {
			t.Fatal(err)
		}
		if pidB != pidA {
			t.Fatalf("upstream was not reused after a clean reset: pid %d then %d", pidA, pidB)
		}
		if rows != 0 || app != "" || path != `"$user", public` {
			t.Fatalf("next client saw dirty state: rows=%d application_name=%q search_path=%q", rows, app, path)
		}
		if b.PgConn().TxStatus() != 'I' {
			t.Fatalf("next client starts in transaction status %q", b.PgConn().TxStatus())
		}
		b.Close(ctx)
	})

	t.Run("query running: destroyed and cancelled", func(t *testing.T) {
		a := sc.connect(t, "")
		var pidA int
		if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidA); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Exec(ctx, "INSERT INTO killed VALUES ('running')"); err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = a.Exec(context.Background(), "SELECT pg_sleep(60)") }()
		waitFor(t, 5*time.Second, "pg_sleep upstream", func() bool {
			out, _ := srv.Primary.Exec(ctx, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'")
			return out == "1"
		})
		rawKill(a)
		b := sc.connect(t, "")
		var pidB, rows int
		if err := b.QueryRow(ctx, "SELECT pg_backend_pid(), (SELECT count(*) FROM killed)").Scan(&pidB, &rows); err != nil {
			t.Fatal(err)
		}
		if pidB == pidA {
			t.Fatal("an upstream with a query in flight was reused")
		}
		if rows != 0 {
			t.Fatalf("uncommitted row visible: %d", rows)
		}
		waitFor(t, 10*time.Second, "the abandoned backend to go away", func() bool {
			out, _ := srv.Primary.Exec(ctx, "postgres", fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pidA))
			return out == "0"
		})
	})
}

func TestPoolExhaustionFailsWith53300AfterTheAcquireTimeout(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	// The timeout leaves the first client's dial (TLS and a new backend)
	// time to finish on a loaded machine.
	sc := startSidecar(t, srv, map[string]string{"POOL_SIZE": "1", "POOL_ACQUIRE_TIMEOUT": "2s"})
	ctx := ctx10(t)
	// In session mode a client holds its upstream from its first
	// statement until it leaves.
	if _, err := sc.connect(t, "").Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := pgx.Connect(ctx, sc.dsn(""))
	if pgErrCode(err) != "53300" {
		t.Fatalf("want 53300, got %v", err)
	}
	if el := time.Since(start); el < 1900*time.Millisecond || el > 10*time.Second {
		t.Fatalf("failed after %s, want about 2s", el)
	}
	if !strings.Contains(err.Error(), "waiting for an upstream connection") {
		t.Fatalf("message: %v", err)
	}
}
