package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/internal/threads"
)

func txnEnv(size int, extra ...string) map[string]string {
	env := map[string]string{"POOL_MODE": "transaction", "POOL_SIZE": fmt.Sprint(size), "LOG_LEVEL": "info"}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// upstreamBackends counts the sidecar's connections on the server.
func upstreamBackends(t *testing.T, srv *pgtest.Server) string {
	out, err := srv.Primary.Exec(context.Background(), "postgres",
		"SELECT count(*) FROM pg_stat_activity WHERE usename = 'brownie-fastapi-server' AND application_name <> 'brownie-sidecar-health'")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPgxWith50ClientsOn4UpstreamsInTransactionMode(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(4))
	ctx := ctx10(t)
	setup := sc.connect(t, "")
	if _, err := setup.Exec(ctx, "CREATE TABLE txn_items (client int, i int, note text)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	const clients, iterations = 50, 60
	var wg sync.WaitGroup
	var txns atomic.Int64
	errs := make(chan error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				conn, err := pgx.Connect(ctx, sc.dsn(""))
				if err != nil {
					return err
				}
				defer conn.Close(ctx)
				for i := range iterations {
					var doubled int64
					var tag string
					if err := conn.QueryRow(ctx, "SELECT $1::int8 * 2, $2::text", int64(i), fmt.Sprint("c", c)).Scan(&doubled, &tag); err != nil {
						return fmt.Errorf("client %d query %d: %w", c, i, err)
					}
					if doubled != int64(2*i) || tag != fmt.Sprint("c", c) {
						return fmt.Errorf("client %d: wrong result %d %q", c, doubled, tag)
					}
					tx, err := conn.Begin(ctx)
					if err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, "INSERT INTO txn_items VALUES ($1, $2, $3)", c, i, "x"); err != nil {
						return fmt.Errorf("client %d insert: %w", c, err)
					}
					var n int
					if err := tx.QueryRow(ctx, "SELECT count(*) FROM txn_items WHERE client = $1", c).Scan(&n); err != nil {
						return err
					}
					if n != i+1 {
						return fmt.Errorf("client %d sees %d rows, want %d", c, n, i+1)
					}
					if i%5 == 0 { // an error inside a transaction, then rollback
						if _, err := tx.Exec(ctx, "SELECT 1/($1::int - $1::int)", i); pgErrCode(err) != "22012" {
							return fmt.Errorf("client %d: want division_by_zero, got %v", c, err)
						}
						if err := tx.Rollback(ctx); err != nil {
							return err
						}
						if _, err := conn.Exec(ctx, "INSERT INTO txn_items VALUES ($1, $2, $3)", c, i, "redo"); err != nil {
							return err
						}
					} else if err := tx.Commit(ctx); err != nil {
						return err
					}
					if i%9 == 0 { // a pipeline of several statements
						b := &pgx.Batch{}
						b.Queue("SELECT $1::int", i)
						b.Queue("SELECT count(*) FROM txn_items WHERE client = $1", c)
						b.Queue("SELECT $1::text || 'x'", "p")
						if err := conn.SendBatch(ctx, b).Close(); err != nil {
							return fmt.Errorf("client %d batch: %w", c, err)
						}
					}
					txns.Add(2)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := upstreamBackends(t, srv); n > "4" || len(n) > 1 {
		t.Fatalf("%s upstream connections, want at most 4", n)
	}
	out, _ := srv.Primary.Exec(ctx, "brownie_metadata", "SELECT count(*) FROM txn_items")
	if out != fmt.Sprint(clients*iterations) {
		t.Fatalf("%s rows, want %d", out, clients*iterations)
	}
	_, body := sc.get(t, "/metrics")
	// Each upstream prepares each text once (miss); other clients' Parses
	// of the text find it there (hit).
	for _, want := range []string{`brownie_sidecar_prepared_statements_total{result="hit"}`, `brownie_sidecar_prepared_statements_total{result="miss"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	noQuietWaitRescued(t, sc)
	t.Logf("%d transactions; %s", txns.Load(), grepLines(body, "prepared_statements_total{"))
}

func TestPsycopg3WithItsDefaultPrepareThresholdInTransactionMode(t *testing.T) {
	if _, err := exec.Command("/usr/bin/python3", "-c", "import psycopg").CombinedOutput(); err != nil {
		t.Fatalf("psycopg 3 is not installed for /usr/bin/python3 (make deps installs python3-psycopg): %v", err)
	}
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(3))
	setup := sc.connect(t, "")
	if _, err := setup.Exec(ctx10(t), "CREATE TABLE psy (client int, i int)"); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(sc.addr)
	dsn := fmt.Sprintf("host=%s port=%s dbname=brownie_metadata user=brownie-fastapi-server sslmode=disable options='-c timezone=UTC'", host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "testdata/psycopg_loop.py", dsn, "12", "40")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psycopg loop: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "ok 480") {
		t.Fatalf("psycopg loop output: %s", out)
	}
}

// TestPgbenchPreparedWith20ClientsOn2Upstreams runs pgbench's TPC-B-like
// transactions, prepared, through the sidecar in transaction mode with 2
// upstreams for 20 clients, and in session mode with one each. Every
// transaction succeeds, and no wait of a relay after a quiet answer
// missed its answer (noQuietWaitRescued).
func TestPgbenchPreparedWith20ClientsOn2Upstreams(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	pgbench := "/usr/lib/postgresql/15/bin/pgbench"
	for i, mode := range []struct {
		name string
		env  map[string]string
	}{
		{"transaction", txnEnv(2)},
		{"session", map[string]string{"POOL_MODE": "session", "POOL_SIZE": "20", "LOG_LEVEL": "info"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			sc := startSidecar(t, srv, mode.env)
			host, port, _ := net.SplitHostPort(sc.addr)
			run := func(args ...string) string {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, pgbench, append([]string{"-h", host, "-p", port, "-U", "brownie-fastapi-server"}, args...)...)
				cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("pgbench %v: %v\n%s", args, err, out)
				}
				return string(out)
			}
			if i == 0 {
				run("-i", "-s", "1", "-q", "brownie_metadata")
			}
			out := run("-M", "prepared", "-c", "20", "-t", "150", "-n", "brownie_metadata")
			if !strings.Contains(out, "number of failed transactions: 0") || !strings.Contains(out, "number of transactions actually processed: 3000/3000") {
				t.Fatalf("pgbench output:\n%s", out)
			}
			noQuietWaitRescued(t, sc)
		})
	}
}

func TestNoSessionStateLeaksBetweenClientsAlternatingOnOneUpstream(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(1))
	ctx := ctx10(t)
	setup := sc.connect(t, "")
	if _, err := setup.Exec(ctx, "CREATE SCHEMA alpha; CREATE SCHEMA beta"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)
	type want struct{ path, tz, timeout, app string }
	a := sc.connect(t, "options='-c timezone=UTC'")
	b := sc.connect(t, "application_name=bee")
	wa := want{"alpha", "America/New_York", "1234ms", "ay"}
	wb := want{"beta, public", "Asia/Tokyo", "5s", "bee"}
	for _, q := range []string{"SET search_path = alpha", "SET TIME ZONE 'America/New_York'", "SET statement_timeout = 1234", "SET application_name = 'ay'"} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"SET search_path = beta, public", "SET timezone = 'Asia/Tokyo'", "SET statement_timeout = '5s'"} {
		if _, err := b.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, conn *pgx.Conn, w want) {
		t.Helper()
		var got want
		var pid int
		if err := conn.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('TimeZone'), current_setting('statement_timeout'), current_setting('application_name'), pg_backend_pid()").
			Scan(&got.path, &got.tz, &got.timeout, &got.app, &pid); err != nil {
			t.Fatal(err)
		}
		if got != w {
			t.Fatalf("client %s sees %+v, want %+v", name, got, w)
		}
		if ps := conn.PgConn().ParameterStatus("TimeZone"); ps != w.tz {
			t.Fatalf("client %s was told TimeZone %q, want %q", name, ps, w.tz)
		}
	}
	var pids = map[int]bool{}
	for range 10 {
		check("a", a, wa)
		check("b", b, wb)
		var pid int
		_ = a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
		pids[pid] = true
		_ = b.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
		pids[pid] = true
	}
	if len(pids) != 1 {
		t.Fatalf("clients used %d upstream connections, want them to share one", len(pids))
	}
	// A SET rolled back, and SET LOCAL, leave nothing behind.
	tx, _ := a.Begin(ctx)
	if _, err := tx.Exec(ctx, "SET statement_timeout = 999"); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	tx, _ = a.Begin(ctx)
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = beta"); err != nil {
		t.Fatal(err)
	}
	_ = tx.Commit(ctx)
	check("a", a, wa)
	check("b", b, wb)
	// RESET ALL returns a client to its own startup settings.
	if _, err := a.Exec(ctx, "RESET ALL"); err != nil {
		t.Fatal(err)
	}
	check("a", a, want{`"$user", public`, "UTC", "0", ""})
	check("b", b, wb)

	// Clients with settings from their startup only: two with the same
	// ones share what the upstream has applied, a third has none, and one
	// of the two changing a setting leaves the other's alone.
	c := sc.connect(t, "application_name=cee options='-c statement_timeout=4321'")
	d := sc.connect(t, "application_name=cee options='-c statement_timeout=4321'")
	e := sc.connect(t, "")
	var tz string
	if err := e.QueryRow(ctx, "SHOW TimeZone").Scan(&tz); err != nil {
		t.Fatal(err)
	}
	wc := want{`"$user", public`, tz, "4321ms", "cee"}
	we := want{`"$user", public`, tz, "0", ""}
	for range 5 {
		check("c", c, wc)
		check("d", d, wc)
		check("e", e, we)
		check("d", d, wc)
		check("b", b, wb)
	}
	if _, err := d.Exec(ctx, "SET statement_timeout = '1s'"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		check("c", c, wc) // first on the upstream d's SET just ran on
		check("d", d, want{`"$user", public`, tz, "1s", "cee"})
		check("e", e, we)
	}
}

func TestListenPinsTheSessionSoNotificationsArrive(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2))
	ctx := ctx10(t)
	listener := sc.connect(t, "")
	notifier := sc.connect(t, "")
	if _, err := listener.Exec(ctx, "LISTEN incidents"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // the notifier takes the other connection per transaction
		if _, err := notifier.Exec(ctx, "SELECT pg_notify('incidents', $1)", fmt.Sprint("n", i)); err != nil {
			t.Fatal(err)
		}
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Payload != fmt.Sprint("n", i) {
			t.Fatalf("got %+v", n)
		}
	}
	_, body := sc.get(t, "/metrics")
	if !strings.Contains(body, `brownie_sidecar_pinned_sessions{reason="listen"} 1`) {
		t.Fatalf("pin not counted:\n%s", grepLines(body, "pinned"))
	}
}

func TestPinPolicyErrorRefusesSessionStateWith0A000(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2, "POOL_PIN_POLICY", "error"))
	ctx := ctx10(t)
	conn := sc.connect(t, "")
	for _, q := range []string{"LISTEN incidents", "CREATE TEMP TABLE scratch (v int)", "PREPARE p AS SELECT 1"} {
		_, err := conn.Exec(ctx, q) // simple protocol
		if pgErrCode(err) != "0A000" || !strings.Contains(err.Error(), "not supported in transaction pooling mode") {
			t.Fatalf("%s: want 0A000, got %v", q, err)
		}
	}
	// Extended protocol, with a parameter: the advisory lock is refused too.
	_, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", 42)
	if pgErrCode(err) != "0A000" || !strings.Contains(err.Error(), "advisory locks") {
		t.Fatalf("advisory lock: want 0A000, got %v", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("session unusable after refusals: %v", err)
	}
}

func TestAClientKilledHoldingARowLockReleasesItAtOnce(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2))
	ctx := ctx10(t)
	setup := sc.connect(t, "")
	if _, err := setup.Exec(ctx, "CREATE TABLE locked (id int primary key); INSERT INTO locked VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	a := sc.connect(t, "")
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT * FROM locked WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	rawKill(a)
	b := sc.connect(t, "")
	btx, err := b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := btx.Exec(ctx, "SET LOCAL lock_timeout = '3s'"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := btx.Exec(ctx, "SELECT * FROM locked WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatalf("lock still held after the client died: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("waited %s for the lock", el)
	}
	_ = btx.Commit(ctx)
}

func TestCancelInTransactionModeReachesTheServingUpstream(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(2))
	ctx := ctx10(t)
	conn := sc.connect(t, "")
	// A cancel when nothing runs is ignored: the next query still works.
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), "SELECT pg_sleep(30)")
		errc <- err
	}()
	waitFor(t, 10*time.Second, "pg_sleep to start", func() bool {
		out, _ := srv.Primary.Exec(ctx, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
		return out == "1"
	})
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		var code string
		if err != nil {
			code = pgErrCode(err)
		}
		if code != "57014" {
			t.Fatalf("want 57014, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not cancelled")
	}
	if err := conn.Ping(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestThreadsFollowClientsQueueingForConnections: the sidecar adds a
// thread while clients queue for pooled connections and gives it back
// once they stop. The policy here leaves out the scheduling-latency
// condition (any wait counts), so the test decides when clients queue.
func TestThreadsFollowClientsQueueingForConnections(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sets := make(chan int, 64)
	p := threads.Policy{Min: 1, Max: 2, Interval: 20 * time.Millisecond, Raise: -1, RaiseAfter: 1, Lower: -1, LowerAfter: 3}
	sc := startSidecarThreads(t, srv, txnEnv(1), Threads{Max: 2, Set: func(n int) { sets <- n }, Policy: &p})
	next := func(want int, when string) {
		t.Helper()
		select {
		case n := <-sets:
			if n != want {
				t.Fatalf("%s: set %d threads, want %d", when, n, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no change to %d threads within 10s", when, want)
		}
	}
	next(1, "at start")

	// Four clients on a pool of one: three queue at any time.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		conn := sc.connect(t, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := conn.Exec(context.Background(), "SELECT pg_sleep(0.02)"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	next(2, "while clients queue")
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a client's statement failed: %v", err)
	}
	next(1, "once nobody queues")
}
