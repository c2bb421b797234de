package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// The reference relays carry real sessions to PostgreSQL with the client
// certificate: round trips in both protocols, a result of many TLS records
// (the loop's partial records and short reads), several clients at once,
// and an error passing through. Stopping them leaves no goroutine behind.
func TestReferenceRelaysCarrySessionsToPostgres(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	cfg, err := refTLSConfig(srv.CertDir, net.JoinHostPort("localhost", strconv.Itoa(srv.Primary.Port())))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range refKinds {
		t.Run(kind, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			port, stop := serveRelay(t, kind, net.JoinHostPort("localhost", strconv.Itoa(srv.Primary.Port())), cfg, 10)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			dsn := "host=127.0.0.1 port=" + strconv.Itoa(port) + " user=" + pgcluster.BrownieRole + " dbname=brownie_metadata sslmode=disable"
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Go(func() {
					conn, err := pgx.Connect(ctx, dsn)
					if err != nil {
						t.Errorf("client %d: connect: %v", i, err)
						return
					}
					defer conn.Close(context.Background())
					for j := range 50 {
						var got int
						if err := conn.QueryRow(ctx, "SELECT $1::int + 1", j).Scan(&got); err != nil || got != j+1 {
							t.Errorf("client %d: SELECT %d+1 = %d, %v", i, j, got, err)
							return
						}
					}
					var n, total int64
					if err := conn.QueryRow(ctx, "SELECT count(*), sum(length(s)) FROM (SELECT repeat('x', g % 5000) AS s FROM generate_series(1, 4000) g) t").Scan(&n, &total); err != nil || n != 4000 {
						t.Errorf("client %d: large result: %d rows, %v", i, n, err)
					}
					rows, err := conn.Query(ctx, "SELECT repeat(md5(g::text), 64) FROM generate_series(1, 3000) g", pgx.QueryExecModeSimpleProtocol)
					if err != nil {
						t.Errorf("client %d: %v", i, err)
						return
					}
					count := 0
					for rows.Next() {
						count++
					}
					if rows.Err() != nil || count != 3000 {
						t.Errorf("client %d: streamed %d of 3000 rows of 2 KiB, %v", i, count, rows.Err())
					}
					if _, err := conn.Exec(ctx, "SELECT 1/0"); err == nil || !strings.Contains(err.Error(), "22012") {
						t.Errorf("client %d: division by zero gave %v, want SQLSTATE 22012", i, err)
					}
				})
			}
			wg.Wait()
			stop()
		})
	}
}

func TestReferenceRelaysRunOnTheSidecarsThreadCount(t *testing.T) {
	if got := refRelayProcs(nil); got != "1" {
		t.Errorf("no -sidecar-env: GOMAXPROCS %q, want the sidecar's default 1", got)
	}
	if got := refRelayProcs(map[string]string{"GOMAXPROCS": "2", "POOL_SIZE": "5"}); got != "2" {
		t.Errorf("-sidecar-env GOMAXPROCS=2: got %q", got)
	}
}

// go-txloop pools: more clients than connections share them transaction
// by transaction, a transaction keeps its connection across round trips
// (also after an error in it), results of many TLS records pass, and
// clients that leave give their connection back.
func TestTheTransactionReferenceRelayPoolsConnections(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	upstream := net.JoinHostPort("localhost", strconv.Itoa(srv.Primary.Port()))
	cfg, err := refTLSConfig(srv.CertDir, upstream)
	if err != nil {
		t.Fatal(err)
	}
	port, stop := serveRelay(t, refTxLoop, upstream, cfg, 2)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(port) + " user=" + pgcluster.BrownieRole +
		" dbname=brownie_metadata sslmode=disable default_query_exec_mode=exec"
	var pids sync.Map
	client := func(i int) {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("client %d: connect: %v", i, err)
			return
		}
		defer conn.Close(context.Background())
		for j := range 30 {
			var got int
			if err := conn.QueryRow(ctx, "SELECT $1::int + 1", j).Scan(&got); err != nil || got != j+1 {
				t.Errorf("client %d: SELECT %d+1 = %d, %v", i, j, got, err)
				return
			}
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Errorf("client %d: BEGIN: %v", i, err)
			return
		}
		var first, second int32
		err1 := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&first)
		_, err2 := tx.Exec(ctx, "SELECT pg_sleep(0.01)")
		err3 := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&second)
		if err := errors.Join(err1, err2, err3, tx.Commit(ctx)); err != nil || first != second {
			t.Errorf("client %d: a transaction ran on backends %d and %d (%v), want one", i, first, second, err)
		}
		pids.Store(first, true)
		tx, err = conn.Begin(ctx)
		if err != nil {
			t.Errorf("client %d: BEGIN: %v", i, err)
			return
		}
		if _, err := tx.Exec(ctx, "SELECT 1/0"); err == nil || !strings.Contains(err.Error(), "22012") {
			t.Errorf("client %d: division by zero gave %v, want SQLSTATE 22012", i, err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err == nil || !strings.Contains(err.Error(), "25P02") {
			t.Errorf("client %d: a statement after the error gave %v, want SQLSTATE 25P02 (the failed transaction's connection)", i, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Errorf("client %d: ROLLBACK: %v", i, err)
		}
		var n, total int64
		if err := conn.QueryRow(ctx, "SELECT count(*), sum(length(s)) FROM (SELECT repeat('x', g % 5000) AS s FROM generate_series(1, 4000) g) t").Scan(&n, &total); err != nil || n != 4000 {
			t.Errorf("client %d: large result: %d rows, %v", i, n, err)
		}
	}
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() { client(i) })
	}
	wg.Wait()
	client(6) // the connections came back when the six left
	backends := 0
	pids.Range(func(any, any) bool { backends++; return true })
	if backends < 1 || backends > 2 {
		t.Errorf("seven clients ran their transactions on %d backends, want at most the pool's 2", backends)
	}
	stop()
}

// serveRelay runs the reference relay kind on a local port in front of
// upstream until the returned stop, which checks that serving ended
// cleanly and the relay reported no client's failure.
func serveRelay(t *testing.T, kind, upstream string, cfg *tls.Config, poolSize int) (port int, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	var failures strings.Builder
	var mu sync.Mutex
	go func() {
		served <- serveRefRelay(ln, kind, upstream, cfg, poolSize, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			failures.WriteString(err.Error() + "\n")
		})
	}()
	return ln.Addr().(*net.TCPAddr).Port, func() {
		t.Helper()
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if failures.Len() > 0 {
			t.Errorf("the relay reported failures:\n%s", failures.String())
		}
	}
}
