package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// In transaction mode without a shard map the session goroutine reads the
// answer of a request that is one round trip itself; the relay goroutine
// takes over when the transaction stays open, when the server waits for
// the client (COPY FROM STDIN), and when the answer takes longer than
// CLIENT_IDLE_RELEASE.

// TestOneRoundTripRequestsStartNoRelayGoroutine runs simple and extended
// statements (unnamed, as pgbench -M extended and pgx's exec mode send
// them) outside a transaction and checks that no relay goroutine was
// started for them; an open transaction's connection is then watched by
// one, which stays for the session's next transactions.
func TestOneRoundTripRequestsStartNoRelayGoroutine(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"POOL_MODE": "transaction", "POOL_SIZE": "2"})
	ctx := ctx10(t)
	conn := sc.connect(t, "")
	relays := func() int { return goroutinesIn("proxy.(*session).relayLoop(") }
	for i := range 5 {
		var got int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", pgx.QueryExecModeExec, i).Scan(&got); err != nil || got != i+1 {
			t.Fatalf("extended statement: %d %v", got, err)
		}
		if _, err := conn.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT 1/0", pgx.QueryExecModeExec); pgErrCode(err) != "22012" {
		t.Fatalf("division by zero: %v", err)
	}
	if n := relays(); n != 0 {
		t.Fatalf("%d relay goroutines after statements outside a transaction, want 0", n)
	}

	tx, err := conn.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeExec).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if n := relays(); n != 1 {
		t.Fatalf("%d relay goroutines while a transaction is open, want 1", n)
	}
	var again int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeExec).Scan(&again); err != nil || again != pid {
		t.Fatalf("the transaction moved from backend %d to %d (%v)", pid, again, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestAClientKilledDuringAStatementHasItCancelled sends a statement
// outside a transaction from a raw client that then vanishes without a
// cancel request (pgx would send one as it closes): once the answer has
// taken CLIENT_IDLE_RELEASE the session goes back to its client, sees it
// gone, and cancels the statement, as when the relay goroutine reads the
// answer.
func TestAClientKilledDuringAStatementHasItCancelled(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"POOL_MODE": "transaction", "POOL_SIZE": "2", "CLIENT_IDLE_RELEASE": "200ms"})
	ctx := ctx10(t)
	c, running := sleepThrough(ctx, t, srv, sc)
	_ = c.conn.Close()
	waitFor(t, 10*time.Second, "the statement of the vanished client to end", func() bool { return running() == "0" })
	b := sc.connect(t, "")
	if _, err := b.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// TestCopyFromStdinOutsideATransaction copies rows with a COPY FROM
// STDIN outside a transaction, with an idle release so long that only
// handing the attachment to the relay goroutine at the server's
// CopyInResponse lets the session read the client's data.
func TestCopyFromStdinOutsideATransaction(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"POOL_MODE": "transaction", "CLIENT_IDLE_RELEASE": "1h"})
	ctx := ctx10(t)
	conn := sc.connect(t, "")
	if _, err := conn.Exec(ctx, "CREATE TABLE copied (id int, note text)"); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 1000)
	for i := range rows {
		rows[i] = []any{i, fmt.Sprintf("row %d", i)}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "note"}, pgx.CopyFromRows(rows))
	if err != nil || n != int64(len(rows)) {
		t.Fatalf("CopyFrom: %d rows, %v", n, err)
	}
	var count, sum int
	if err := conn.QueryRow(ctx, "SELECT count(*), sum(id) FROM copied").Scan(&count, &sum); err != nil || count != 1000 || sum != 999*1000/2 {
		t.Fatalf("copied %d rows summing to %d (%v)", count, sum, err)
	}
}

// TestShutdownEndsAStatementReadInline stops the sidecar while a
// statement outside a transaction runs, with an idle release far longer
// than the shutdown timeout: when the timeout terminates the session, the
// session goroutine stops waiting for the answer at once, and the
// statement is cancelled, instead of the shutdown waiting for it.
func TestShutdownEndsAStatementReadInline(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"POOL_MODE": "transaction", "CLIENT_IDLE_RELEASE": "1h", "SHUTDOWN_TIMEOUT": "1s"})
	ctx := ctx10(t)
	c, running := sleepThrough(ctx, t, srv, sc)
	start := time.Now()
	if code := sc.stop(); code != 0 {
		t.Fatalf("sidecar exited with %d", code)
	}
	// The statement had most of a minute to run: a shutdown that waited
	// for it would take that long.
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("shutdown took %v with a statement running", took)
	}
	waitFor(t, 10*time.Second, "the statement to be cancelled", func() bool { return running() == "0" })
	if e := c.expectFatal("57P01"); e == nil {
		t.Fatal("no FATAL before the connection closed")
	}
}

// sleepThrough starts a raw client session through sc that sends
// SELECT pg_sleep(60) outside a transaction (with no deadline on its
// socket), waits until the statement runs on srv's primary, and returns
// the client and a count of such running statements ("1" or "0").
func sleepThrough(ctx context.Context, t *testing.T, srv *pgtest.Server, sc *sidecar) (*rawClient, func() string) {
	t.Helper()
	c := dialRawClient(t, "tcp", sc.addr)
	c.encodeAndWrite(brownieStartup())
	c.expectReady()
	_ = c.conn.SetDeadline(time.Time{})
	c.encodeAndWrite(&pgproto3.Query{String: "SELECT pg_sleep(60)"})
	running := func() string {
		out, _ := srv.Primary.Exec(ctx, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
		return out
	}
	waitFor(t, 5*time.Second, "pg_sleep upstream", func() bool { return running() == "1" })
	return c, running
}

// TestARequestToABackendThatEndedWhileIdleIsAnswered: in transaction mode
// the session goroutine waits for the answer itself (proxy/inline.go). A
// pooled connection whose backend was terminated while it sat idle (no
// check before reuse: POOL_CHECK_DELAY 1h) takes the next request anyway;
// the wait must end on the dead socket, not hang, and the client gets an
// answer or one error, never silence, and the next client's statement
// works.
func TestARequestToABackendThatEndedWhileIdleIsAnswered(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, txnEnv(1, "POOL_CHECK_DELAY", "1h"))
	for round := range 3 {
		w := dialWire(t, sc.dsn(""))
		got := w.round(&pgproto3.Query{String: "SELECT pg_backend_pid()"})
		if len(got) < 2 || !strings.HasPrefix(got[1], "DataRow ") {
			t.Fatalf("round %d: backend pid: %q", round, got)
		}
		pid := strings.TrimPrefix(got[1], "DataRow ")
		ctx := ctx10(t)
		if _, err := srv.Primary.Exec(ctx, "postgres", "SELECT pg_terminate_backend("+pid+", 5000)"); err != nil {
			t.Fatal(err)
		}
		// The request goes to the dead connection; as both protocols do.
		var msgs []pgproto3.FrontendMessage
		if round%2 == 0 {
			msgs = []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 41 + 1"}}
		} else {
			msgs = []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 41 + 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}
		}
		for _, m := range msgs {
			w.hc.Frontend.Send(m)
		}
		if err := w.hc.Frontend.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = w.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var answer []string
		for {
			msg, err := w.hc.Frontend.Receive()
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("round %d: no answer within 10 s after %q", round, answer)
				}
				break // closed after a FATAL
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				answer = append(answer, e.Severity+" "+e.Code)
			}
			if d, ok := msg.(*pgproto3.DataRow); ok {
				answer = append(answer, "DataRow "+string(d.Values[0]))
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		if len(answer) != 1 || answer[0] != "DataRow 42" && !strings.HasPrefix(answer[0], "FATAL ") {
			t.Fatalf("round %d: answer %q, want the row or one FATAL", round, answer)
		}
		t.Logf("round %d: %q", round, answer)
		c := sc.connect(t, "")
		var n int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
			t.Fatalf("round %d: the next client's statement: %d, %v", round, n, err)
		}
	}
}

// TestAQueuedRequestWhoseServerEndsMidAnswerGetsItsError: a session that
// waited for its connection has its request's end written from inside the
// wait for the answer (proxy/inline.go). When the server ends while that
// wait runs, the wait ends with it: the client gets the server's FATAL at
// once, not after its statement's 30 s.
func TestAQueuedRequestWhoseServerEndsMidAnswerGetsItsError(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	// No idle sweep within the test: nothing but the held write itself
	// sends the queued request.
	sc := startSidecar(t, srv, txnEnv(1, "CLIENT_IDLE_RELEASE", "1m"))
	ctx := ctx10(t)
	w := dialWire(t, sc.dsn("")) // both greeted while the connection is free
	holder := sc.connect(t, "")
	tx, err := holder.Begin(ctx) // holds the pool's one connection
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	w.hc.Frontend.Send(&pgproto3.Query{String: "SELECT pg_sleep(30) -- queued"})
	if err := w.hc.Frontend.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the request to queue for the pool", func() bool {
		for _, line := range strings.Split(sc.metricsText(t), "\n") {
			if strings.HasPrefix(line, "brownie_sidecar_pool_waiting_clients{") && !strings.HasSuffix(line, " 0") {
				return true
			}
		}
		return false
	})
	if err := tx.Commit(ctx); err != nil { // the connection goes to the queued request
		t.Fatal(err)
	}
	const running = "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%-- queued' AND pid <> pg_backend_pid()"
	var pid string
	waitFor(t, 5*time.Second, "the queued statement to run", func() bool {
		out, err := srv.Primary.Exec(ctx, "postgres", running)
		pid = strings.TrimSpace(out)
		return err == nil && pid != ""
	})
	start := time.Now()
	if _, err := srv.Primary.Exec(ctx, "postgres", "SELECT pg_terminate_backend("+pid+")"); err != nil {
		t.Fatal(err)
	}
	errs := w.errorsUntilClosed()
	if len(errs) != 1 || errs[0] != "FATAL 57P01" {
		t.Fatalf("errors before the connection closed: %q, want exactly the server's FATAL 57P01", errs)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the FATAL came %s after the server ended", took)
	}
}
