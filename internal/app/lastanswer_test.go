package app

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// quitAtReadyForQuery attaches gdb to the Postgres backend pid and makes
// it quit (SIGQUIT, the signal of an immediate shutdown) at the start of
// its next ReadyForQuery: the answer of the request it runs next is then
// written but for its ReadyForQuery, and the backend's shutdown WARNING
// flushes it before the backend exits. That is the moment a server
// stopped with pg_ctl -m immediate under load hits now and then; the
// breakpoint makes it happen every time. It returns once the breakpoint
// is set; the returned function waits for gdb to end and returns
// its output. (A request sent before the backend runs again waits in its
// socket: once the breakpoint is set, the backend's next ReadyForQuery is
// the one that quits.)
func quitAtReadyForQuery(t *testing.T, pid int) (wait func() string) {
	t.Helper()
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		t.Fatal("gdb is not installed (make deps installs it)")
	}
	cmd := exec.Command(gdb, "-p", strconv.Itoa(pid), "-batch", "-nx",
		"-ex", "break ReadyForQuery", "-ex", "continue", "-ex", "signal SIGQUIT")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errs strings.Builder
	cmd.Stderr = &errs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	running := make(chan struct{})
	go func() {
		var b strings.Builder
		r := bufio.NewReader(out)
		seen := false
		for {
			line, err := r.ReadString('\n')
			b.WriteString(line)
			if !seen && strings.HasPrefix(line, "Breakpoint 1 at ") {
				seen = true
				close(running)
			}
			if err != nil {
				_, _ = io.Copy(&b, r)
				break
			}
		}
		_ = cmd.Wait()
		done <- b.String() + errs.String()
	}()
	var output string
	select {
	case <-running:
	case output = <-done:
		t.Fatalf("gdb ended before it set its breakpoint:\n%s", output)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("gdb did not set its breakpoint in backend %d within 30s", pid)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return func() string {
		select {
		case output = <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			output = <-done
		}
		waited = true
		return output
	}
}

// A read whose server stops between writing the read's whole answer and
// its ReadyForQuery (an immediate shutdown's WARNING flushes the rows and
// the command tag, then the backend exits) completed on the server: the
// client gets its rows and then ReadyForQuery, with no error, and its next
// statement runs on a new connection. Both protocols, pgx's extended one
// (one Execute) and a simple Query of one statement, in both pool modes.
func TestAReadWhoseServerDiesBeforeItsReadyForQueryGetsItsWholeAnswer(t *testing.T) {
	e := startRouting(t)
	// One pooled connection per host, so the backend that runs the read
	// is known in advance. Both sidecars run from the start, so each sees
	// every quit.
	sidecars := map[string]*sidecar{}
	for _, poolMode := range []string{"transaction", "session"} {
		sidecars[poolMode] = startSidecar(t, e.srv, map[string]string{
			"SHARD_MAP_FILE":        e.mapFile,
			"POOL_MODE":             poolMode,
			"POOL_SIZE":             "1",
			"HEALTH_CHECK_INTERVAL": "100ms",
			"HEALTH_CHECK_TIMEOUT":  "2s",
			"REPLICA_BAN_TIME":      "1s",
			"POOL_CHECK_DELAY":      "0",
			"LOG_LEVEL":             "info",
		})
	}
	for _, sc := range sidecars {
		waitFor(t, 15*time.Second, "sidecar ready", func() bool {
			code, _ := sc.get(t, "/ready")
			return code == 200
		})
	}
	team := e.teamOn(t, "shard-0")
	replica := e.srv.Shards[0].Replica.Port()
	replicaAddr := "127.0.0.1:" + strconv.Itoa(replica)
	const read = "SELECT inet_server_port(), pg_backend_pid() FROM (SELECT count(*) FROM items WHERE team_id = $1) s"

	quits := 0
	for _, poolMode := range []string{"transaction", "session"} {
		sc := sidecars[poolMode]
		finished := 0
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			t.Run(poolMode+"/"+mode.String(), func(t *testing.T) {
				ctx := context.Background()
				// A backend that quits makes Postgres restart the others
				// (a crash restart), the health checks' among them: each
				// sidecar's check then finds the replica down, which
				// closes the pool's idle connections to it, and up again.
				// Until then the connection that serves the next read may
				// go.
				for _, other := range sidecars {
					waitFor(t, 30*time.Second, "the replica healthy again after the quits", func() bool {
						return healthyAgain(other.logs.String(), replicaAddr) >= quits
					})
				}
				cfg, err := pgx.ParseConfig(sc.dsn(""))
				if err != nil {
					t.Fatal(err)
				}
				var notices []string // the session goroutine of pgx only
				cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Code+" "+n.Message) }
				c, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(ctx)
				var port, pid int
				waitFor(t, 30*time.Second, "a read on shard-0's replica", func() bool {
					err := c.QueryRow(ctx, read, mode, team).Scan(&port, &pid)
					return err == nil && port == replica
				})
				wait := quitAtReadyForQuery(t, pid)

				var gotPort, gotPid int
				err = c.QueryRow(ctx, read, mode, team).Scan(&gotPort, &gotPid)
				output := wait()
				quits++
				if !strings.Contains(output, "Breakpoint 1, ") || !strings.Contains(output, "exited with code 02") {
					t.Fatalf("the backend did not quit at its ReadyForQuery; gdb said:\n%s", output)
				}
				if err != nil || gotPort != replica || gotPid != pid {
					t.Fatalf("the read whose backend quit before its ReadyForQuery: port %d, pid %d, error %v; want the answer of backend %d on port %d", gotPort, gotPid, err, pid, replica)
				}
				if len(notices) != 0 {
					t.Errorf("the client got notices: %q", notices)
				}
				// The session goes on, on a new connection.
				var one int
				if err := c.QueryRow(ctx, "SELECT 1 FROM (SELECT count(*) FROM items WHERE team_id = $1) s", mode, team).Scan(&one); err != nil {
					t.Fatalf("the statement after: %v", err)
				}
				finished++
				_, metrics := sc.get(t, "/metrics")
				want := `brownie_sidecar_upstream_lost_total{outcome="finished",role="replica",shard="shard-0"} ` + strconv.Itoa(finished) + "\n"
				if !strings.Contains(metrics, want) {
					t.Errorf("metrics do not count the connections lost after a whole answer: want %q", want)
				}
			})
		}
	}
}

// healthyAgain counts the sidecar's log events of host addr found healthy
// again after a failed check.
func healthyAgain(logs, addr string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"msg":"host healthy again"`) && strings.Contains(line, `"addr":"`+addr+`"`) {
			n++
		}
	}
	return n
}
