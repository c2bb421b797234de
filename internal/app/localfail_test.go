package app

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// upstreamsReplaced sums brownie_sidecar_upstream_lost_total for outcome.
func upstreamsReplaced(t *testing.T, sc *sidecar, outcome string) float64 {
	t.Helper()
	_, body := sc.get(t, "/metrics")
	var n float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "brownie_sidecar_upstream_lost_total{") || !strings.Contains(line, `outcome="`+outcome+`"`) {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric %s: %v", line, err)
		}
		n += f
	}
	return n
}

// terminateBackend ends backend pid of cl as an administrator would, and
// waits until it is gone.
func terminateBackend(t *testing.T, cl *pgcluster.Cluster, pid any) {
	t.Helper()
	out, err := cl.Exec(ctx10(t), "postgres", fmt.Sprintf("SELECT pg_terminate_backend(%v, 10000)", pid))
	if err != nil || strings.TrimSpace(out) != "t" {
		t.Fatalf("pg_terminate_backend(%v): %q %v", pid, out, err)
	}
}

// terminateIdle terminates a backend the sidecar holds for an idle
// session, then waits until the sidecar has replaced it.
func terminateIdle(t *testing.T, sc *sidecar, cl *pgcluster.Cluster, pid any) {
	t.Helper()
	before := upstreamsReplaced(t, sc, "replaced")
	terminateBackend(t, cl, pid)
	waitFor(t, 10*time.Second, "the idle upstream replaced", func() bool {
		return upstreamsReplaced(t, sc, "replaced") == before+1
	})
}

// wireBackend runs sql (ending in a SELECT of pg_backend_pid() and
// inet_server_port()) through w and returns the pid and port.
func wireBackend(t *testing.T, w *wireConn, sql string) (pid, port string) {
	t.Helper()
	got := w.round(&pgproto3.Query{String: sql})
	for _, m := range got {
		if row, ok := strings.CutPrefix(m, "DataRow "); ok {
			pid, port, _ = strings.Cut(row, ",")
			return strings.TrimSpace(pid), strings.TrimSpace(port)
		}
	}
	t.Fatalf("%s: %q", sql, got)
	return "", ""
}

// endsWithOneError sends a statement after the client's backend was
// terminated and checks that the client gets exactly one error (the
// server's FATAL or the sidecar's 08006) before its connection closes.
func endsWithOneError(t *testing.T, w *wireConn) {
	t.Helper()
	w.hc.Frontend.Send(&pgproto3.Query{String: "SELECT 1"})
	_ = w.hc.Frontend.Flush() // may fail: the sidecar may have closed already
	errs := w.errorsUntilClosed()
	if len(errs) != 1 || (errs[0] != "FATAL 57P01" && errs[0] != "FATAL 08006") {
		t.Fatalf("errors before the connection closed: %q, want exactly one FATAL 57P01 or 08006", errs)
	}
}

// TestIdleUpstreamLossIsLocal: a backend that dies while its session is
// idle on it, holding nothing there, costs the client nothing: its next
// statements run on a new connection with its settings and prepared
// statements. A session with state on the backend (LISTEN, a temporary
// table) or inside a transaction there ends with exactly one error.
func TestIdleUpstreamLossIsLocal(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Replica: true})
	ctx := context.Background()
	if _, err := srv.Primary.Exec(ctx, "brownie_metadata", routingSchema); err != nil {
		t.Fatal(err)
	}
	if err := srv.Replica.WaitReplayed(ctx, srv.Primary); err != nil {
		t.Fatal(err)
	}
	byPort := map[string]*pgcluster.Cluster{
		strconv.Itoa(srv.Primary.Port()): srv.Primary,
		strconv.Itoa(srv.Replica.Port()): srv.Replica,
	}
	mapFile := filepath.Join(t.TempDir(), "shardmap.yaml")
	writeFileAtomic(t, mapFile, fmt.Sprintf(`key_type: uuid
unlisted_tables: reject
shards:
  - name: shard-0
    primary: 127.0.0.1:%d
    replicas: [127.0.0.1:%d]
tables:
  items: {sharded_by: team_id, keyless: reject}
  dir: replicated
`, srv.Primary.Port(), srv.Replica.Port()))
	routed := func(mode string) map[string]string {
		return map[string]string{"SHARD_MAP_FILE": mapFile, "POOL_MODE": mode, "LOG_LEVEL": "info",
			"HEALTH_CHECK_INTERVAL": "100ms", "MAX_REPLICA_LAG": "5s"}
	}
	const read = "SELECT pg_backend_pid(), inet_server_port(), pg_is_in_recovery() FROM dir WHERE id = 1"

	t.Run("session mode, one upstream", func(t *testing.T) {
		sc := startSidecar(t, srv, map[string]string{"LOG_LEVEL": "info"})
		conn := sc.connect(t, "") // pgx prepares its statements under its own names
		c := ctx10(t)
		if _, err := conn.Exec(c, "SET application_name = 'idle-loss'"); err != nil {
			t.Fatal(err)
		}
		var pid, sum int
		if err := conn.QueryRow(c, "SELECT pg_backend_pid(), $1::int + 1", 1).Scan(&pid, &sum); err != nil {
			t.Fatal(err)
		}
		terminateIdle(t, sc, srv.Primary, pid)
		var pid2 int
		var app string
		for i := range 2 { // the cached statement, on the new connection
			if err := conn.QueryRow(c, "SELECT pg_backend_pid(), $1::int + 1", 41).Scan(&pid2, &sum); err != nil || sum != 42 {
				t.Fatalf("statement %d after the idle backend died: %d %v", i, sum, err)
			}
		}
		if err := conn.QueryRow(c, "SELECT current_setting('application_name')").Scan(&app); err != nil || app != "idle-loss" || pid2 == pid {
			t.Fatalf("after the idle backend died: application_name %q, backend %d (was %d), %v", app, pid2, pid, err)
		}

		w := dialWire(t, sc.dsn(""))
		pidT, _ := wireBackend(t, w, "CREATE TEMP TABLE tt (x int); SELECT pg_backend_pid(), 0")
		terminateBackend(t, srv.Primary, pidT)
		endsWithOneError(t, w)
	})

	t.Run("session mode, routed", func(t *testing.T) {
		sc := startSidecar(t, srv, routed("session"))
		waitFor(t, 15*time.Second, "sidecar ready", func() bool { code, _ := sc.get(t, "/ready"); return code == 200 })
		conn := sc.connect(t, "")
		c := ctx10(t)
		team := newUUID()
		if _, err := conn.Exec(c, "INSERT INTO items VALUES ($1, 1, 'a')", team); err != nil {
			t.Fatal(err)
		}
		var wpid int
		if err := conn.QueryRow(c, "SELECT pg_backend_pid() FROM items WHERE team_id = $1 FOR UPDATE", team).Scan(&wpid); err != nil {
			t.Fatal(err)
		}
		var pid, port int
		var rec bool
		// Reads follow the session's write to the primary until the
		// health checks see the replica has replayed it.
		waitFor(t, 10*time.Second, "a read served by the replica", func() bool {
			if err := conn.QueryRow(c, read).Scan(&pid, &port, &rec); err != nil {
				t.Fatal(err)
			}
			return rec
		})
		// The session is idle on its replica connection, its primary one
		// parked: both die; the session goes on.
		terminateIdle(t, sc, srv.Replica, pid)
		terminateBackend(t, srv.Primary, wpid)
		var pid2 int
		if err := conn.QueryRow(c, read).Scan(&pid2, &port, &rec); err != nil || !rec || pid2 == pid {
			t.Fatalf("read after its replica backend died: backend %d (was %d), replica %v, %v", pid2, pid, rec, err)
		}
		before := upstreamsReplaced(t, sc, "replaced")
		if _, err := conn.Exec(c, "UPDATE items SET note = 'b' WHERE team_id = $1", team); err != nil {
			t.Fatalf("write after its parked primary backend died: %v", err)
		}
		if n := upstreamsReplaced(t, sc, "replaced"); n != before+1 {
			t.Fatalf("replaced upstreams: %v, want %v (the dead parked primary)", n, before+1)
		}

		w := dialWire(t, sc.dsn(""))
		pidL, portL := wireBackend(t, w, "LISTEN idle_loss; SELECT pg_backend_pid(), inet_server_port()")
		terminateBackend(t, byPort[portL], pidL)
		endsWithOneError(t, w)
	})

	t.Run("transaction mode, pinned", func(t *testing.T) {
		sc := startSidecar(t, srv, routed("transaction"))
		waitFor(t, 15*time.Second, "sidecar ready", func() bool { code, _ := sc.get(t, "/ready"); return code == 200 })
		w := dialWire(t, sc.dsn(""))
		pidL, portL := wireBackend(t, w, "LISTEN idle_loss; SELECT pg_backend_pid(), inet_server_port()")
		terminateBackend(t, byPort[portL], pidL)
		endsWithOneError(t, w)
	})

	// Last: the replica is stopped for good.
	t.Run("session mode, replica stopped", func(t *testing.T) {
		sc := startSidecar(t, srv, routed("session"))
		waitFor(t, 15*time.Second, "sidecar ready", func() bool { code, _ := sc.get(t, "/ready"); return code == 200 })
		cfg, err := pgx.ParseConfig(sc.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		var notices atomic.Int32
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			t.Logf("notice: %s %s %s", n.Severity, n.Code, n.Message)
			notices.Add(1)
		}
		conn, err := pgx.ConnectConfig(ctx10(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var pid, port int
		var rec bool
		if err := conn.QueryRow(ctx10(t), read).Scan(&pid, &port, &rec); err != nil || !rec {
			t.Fatalf("read: on a replica %v, %v", rec, err)
		}
		before := upstreamsReplaced(t, sc, "replaced")
		if err := srv.Replica.Kill(); err != nil { // pg_ctl stop -m immediate
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the idle replica connection replaced", func() bool {
			return upstreamsReplaced(t, sc, "replaced") == before+1
		})
		if err := conn.QueryRow(ctx10(t), read).Scan(&pid, &port, &rec); err != nil || rec {
			t.Fatalf("read after the replica stopped: on a replica %v, %v (want the primary)", rec, err)
		}
		if n := notices.Load(); n != 0 {
			t.Fatalf("%d notices reached the idle client", n)
		}
	})
}
