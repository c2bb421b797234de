package app

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// TestDormantSessionsServeStatementsAfterwards lets sessions idle past
// CLIENT_IDLE_RELEASE (short here) in both pool modes, twice, and checks
// that they went dormant (the gauge; no session goroutine left; in
// transaction mode no relay goroutine either, in session mode the one
// that reads its upstream) and then run simple and extended statements and
// transactions with their settings intact, over TLS too. A client that
// leaves while dormant ends its session, and a sidecar stopping with
// dormant sessions ends them and exits cleanly.
func TestDormantSessionsServeStatementsAfterwards(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	for _, tc := range []struct {
		name, mode string
		tls        bool
	}{{"transaction", "transaction", false}, {"session", "session", false}, {"transaction over TLS", "transaction", true}} {
		mode := tc.mode
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"POOL_MODE": mode, "CLIENT_IDLE_RELEASE": "50ms"}
			if tc.tls {
				env["CLIENT_TLS_CERT"] = filepath.Join(srv.CertDir, "server.crt")
				env["CLIENT_TLS_KEY"] = filepath.Join(srv.CertDir, "server.key")
			}
			sc := startSidecar(t, srv, env)
			defer sc.stop()
			ctx := ctx10(t)
			connect := func(extra string) *pgx.Conn {
				if !tc.tls {
					return sc.connect(t, extra)
				}
				_, port, _ := net.SplitHostPort(sc.addr)
				conn, err := pgx.Connect(ctx, fmt.Sprintf("host=localhost port=%s dbname=brownie_metadata user=brownie-fastapi-server sslmode=verify-full sslrootcert=%s %s",
					port, filepath.Join(srv.CertDir, "ca.crt"), extra))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close(context.Background()) })
				return conn
			}
			conn := connect("application_name=idle-test")
			gauge := func(name string) float64 {
				_, body := sc.get(t, "/metrics")
				v, _ := metricValue(body, name)
				return v
			}
			dormant := func() float64 { return gauge("brownie_sidecar_client_connections_dormant") }
			wantRelays := 0
			if mode == "session" {
				wantRelays = 1 // it keeps its upstream, and the goroutine reading it
			}
			if _, err := conn.Exec(ctx, "SET work_mem = '3MB'"); err != nil {
				t.Fatal(err)
			}
			for round := 1; round <= 2; round++ {
				var one int
				if err := conn.QueryRow(ctx, "SELECT $1::int", round).Scan(&one); err != nil || one != round {
					t.Fatalf("round %d: extended query = %d, %v", round, one, err)
				}
				waitFor(t, 5*time.Second, "the session to go dormant", func() bool {
					return dormant() == 1 && goroutinesIn("proxy.(*session).relayLoop(") == wantRelays &&
						goroutinesIn("proxy.(*session).clientToUpstream(") == 0
				})

				var wm, app string
				if err := conn.QueryRow(ctx, "SELECT current_setting('work_mem'), current_setting('application_name')").Scan(&wm, &app); err != nil {
					t.Fatalf("round %d: after dormancy: %v", round, err)
				}
				if wm != "3MB" || app != "idle-test" {
					t.Fatalf("round %d: settings after dormancy: work_mem %q, application_name %q", round, wm, app)
				}
				if v := dormant(); v != 0 {
					t.Fatalf("round %d: dormant gauge %v with the session busy", round, v)
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var n int
				if err := tx.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 1 {
					t.Fatalf("round %d: in a transaction: %d, %v", round, n, err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}

			leaving := connect("")
			waitFor(t, 5*time.Second, "both sessions to go dormant", func() bool { return dormant() == 2 })
			leaving.Close(ctx)
			waitFor(t, 5*time.Second, "the departed client's session to end", func() bool {
				return gauge("brownie_sidecar_client_connections") == 1 && dormant() == 1
			})
			if code := sc.stop(); code != 0 {
				t.Fatalf("sidecar stopping with a dormant session exited with %d", code)
			}
			if err := conn.Ping(ctx); err == nil {
				t.Fatal("a session survived the sidecar's shutdown")
			}
		})
	}
}

// goroutinesIn counts the goroutines whose stack holds the function call
// prefix fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), fn)
		}
		buf = make([]byte, 2*len(buf))
	}
}
