package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/faultnet"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// failoverMap is the routing tests' map with both shards synchronous and
// shard-0's replica reached through relay; overrides as in routingMap.
func failoverMap(srv *pgtest.Server, relay *faultnet.Relay, overrides string) string {
	h := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	return fmt.Sprintf(`key_type: uuid
unlisted_tables: reject
shards:
  - name: shard-0
    primary: %s
    replicas: [%s]
    synchronous: true
  - name: shard-1
    primary: %s
    replicas: [%s]
    synchronous: true
tables:
  items: {sharded_by: team_id, keyless: reject}
  dir: replicated
overrides: {%s}
`, h(srv.Shards[0].Primary.Port()), h(relay.Port()), h(srv.Shards[1].Primary.Port()), h(srv.Shards[1].Replica.Port()), overrides)
}

// load runs writers (autocommit INSERTs of ids of their own) and readers
// (keyed reads) through the sidecar, each reconnecting after an error,
// and records every acknowledged write and every failure.
type load struct {
	t       *testing.T
	sc      *sidecar
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	acked   map[int64]pgtype.UUID // id → team, for the writes the sidecar acknowledged
	errs    []error               // every failure, writes and reads
	okAt    []time.Time           // when each write was acknowledged
	writes  atomic.Int64
	reads   atomic.Int64
	readErr atomic.Int64
}

func startLoad(t *testing.T, sc *sidecar, writers map[int]pgtype.UUID, readers []pgtype.UUID) *load {
	l := &load{t: t, sc: sc, stop: make(chan struct{}), acked: map[int64]pgtype.UUID{}}
	for w, team := range writers {
		l.wg.Add(1)
		go l.run(func(ctx context.Context, c *pgx.Conn, n int64) error {
			id := int64(w)*1_000_000 + n
			if _, err := c.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, $2)", team, id); err != nil {
				return err
			}
			l.mu.Lock()
			l.acked[id] = team
			l.okAt = append(l.okAt, time.Now())
			l.mu.Unlock()
			l.writes.Add(1)
			return nil
		}, false)
	}
	for _, team := range readers {
		l.wg.Add(1)
		go l.run(func(ctx context.Context, c *pgx.Conn, _ int64) error {
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM items WHERE team_id = $1", team).Scan(&n); err != nil {
				return err
			}
			l.reads.Add(1)
			return nil
		}, true)
	}
	return l
}

func (l *load) run(op func(context.Context, *pgx.Conn, int64) error, read bool) {
	defer l.wg.Done()
	ctx := context.Background()
	var c *pgx.Conn
	defer func() {
		if c != nil {
			_ = c.Close(ctx)
		}
	}()
	for n := int64(0); ; n++ {
		select {
		case <-l.stop:
			return
		default:
		}
		if c == nil {
			var err error
			if c, err = pgx.Connect(ctx, l.sc.dsn("")); err != nil {
				l.fail(fmt.Errorf("connect: %w", err), read)
				c = nil
				continue
			}
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := op(octx, c, n)
		cancel()
		if err != nil {
			l.fail(err, read)
			_ = c.Close(ctx)
			c = nil
		}
	}
}

func (l *load) fail(err error, read bool) {

	if read {
		l.readErr.Add(1)
	}
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// failures returns the failures so far and forgets them.
func (l *load) failures() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.errs
	l.errs = nil
	return e
}

// firstAckAfter is when the first write after at was acknowledged.
func (l *load) firstAckAfter(at time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range l.okAt {
		if t.After(at) {
			return t, true
		}
	}
	return time.Time{}, false
}

// shardStatus reads one shard's health from /status.
func shardStatus(t *testing.T, sc *sidecar, shard string) health.ShardStatus {
	t.Helper()
	_, body := sc.get(t, "/status")
	var st struct {
		Shards []health.ShardStatus `json:"shards"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	for _, s := range st.Shards {
		if s.Name == shard {
			return s
		}
	}
	t.Fatalf("/status has no %s:\n%s", shard, body)
	return health.ShardStatus{}
}

// TestFailuresStayLocal injects faults into a two-shard cluster with
// synchronous replicas under load: a replica that stops answering
// without closing (a relay pausing its packets) and a primary killed with
// SIGKILL, its replica promoted a second later while the shard map is
// reloaded. Reads never fail; a write fails only if it was in flight at
// the kill, always with an ErrorResponse; the others wait and run on the
// promoted replica, where every acknowledged write is found. Last, a
// primary whose health check goes unanswered while it answers the pooled
// connections stays up.
func TestFailuresStayLocal(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Replica: true, Shards: 2, SyncReplication: true})
	ctx := context.Background()
	for i, sh := range srv.Shards {
		if _, err := sh.Primary.Exec(ctx, "brownie_metadata", routingSchema); err != nil {
			t.Fatalf("shard %d schema: %v", i, err)
		}
	}
	relay, err := faultnet.New(fmt.Sprintf("127.0.0.1:%d", srv.Shards[0].Replica.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Close() })
	mapFile := filepath.Join(t.TempDir(), "shardmap.yaml")
	writeFileAtomic(t, mapFile, failoverMap(srv, relay, ""))
	rt := testRouter(t, failoverMap(srv, relay, ""))
	e := &routingEnv{srv: srv, rt: rt, mapFile: mapFile, ports: map[int]string{
		srv.Shards[0].Primary.Port(): "shard-0/primary", srv.Shards[0].Replica.Port(): "shard-0/replica",
		srv.Shards[1].Primary.Port(): "shard-1/primary", srv.Shards[1].Replica.Port(): "shard-1/replica",
	}}
	const checkTimeout = time.Second
	e.sc = startSidecar(t, srv, map[string]string{
		"SHARD_MAP_FILE":        mapFile,
		"POOL_MODE":             "transaction",
		"POOL_SIZE":             "8",
		"HEALTH_CHECK_INTERVAL": "200ms",
		"HEALTH_CHECK_TIMEOUT":  checkTimeout.String(),
		"DB_CONNECT_TIMEOUT":    "1s",
		"REPLICA_BAN_TIME":      "1s",
		"FAILOVER_WAIT":         "10s",
		"POOL_CHECK_DELAY":      "0",
		"LOG_LEVEL":             "info",
	})
	waitFor(t, 15*time.Second, "sidecar ready", func() bool {
		code, _ := e.sc.get(t, "/ready")
		return code == 200
	})
	waitFor(t, 10*time.Second, "the primaries to report their synchronous standbys", func() bool {
		for _, shard := range []string{"shard-0", "shard-1"} {
			st := shardStatus(t, e.sc, shard)
			if len(st.Hosts) != 2 || st.Hosts[1].SyncState != "sync" {
				return false
			}
		}
		return true
	})
	a, b := e.teamOn(t, "shard-0"), e.teamOn(t, "shard-1")
	const where = "SELECT inet_server_port(), pg_is_in_recovery() FROM (SELECT count(*) FROM items WHERE team_id = $1) s"

	t.Run("ABlackholedReplicaIsDetectedWithinTheCheckTimeoutAndOtherHostsAreUnaffected", func(t *testing.T) {
		c := e.sc.connect(t, "")
		waitFor(t, 10*time.Second, "a read on shard-0's replica", func() bool {
			w, _ := servedBy(t, e, c, where, a)
			return w == "shard-0/replica"
		})
		l := startLoad(t, e.sc, map[int]pgtype.UUID{1: b}, []pgtype.UUID{b})
		waitFor(t, 10*time.Second, "load running", func() bool { return l.writes.Load() > 20 && l.reads.Load() > 20 })
		relay.Pause()
		paused := time.Now()
		waitFor(t, 10*time.Second, "the blackholed replica marked down", func() bool {
			st := shardStatus(t, e.sc, "shard-0")
			return len(st.Hosts) == 2 && !st.Hosts[1].Up
		})
		detected := time.Since(paused)
		// A host is down once it has not answered a check for the check
		// timeout; the rest is this loop's polling (every 20ms, over
		// /status) and scheduling.
		if detected > checkTimeout+250*time.Millisecond {
			t.Errorf("the blackholed replica was marked down after %s, HEALTH_CHECK_TIMEOUT is %s", detected, checkTimeout)
		}
		// shard-0's reads now go to its primary; shard-1 never noticed.
		if w, _ := servedBy(t, e, c, where, a); w != "shard-0/primary" {
			t.Errorf("a read after the replica was marked down served by %s", w)
		}
		before := l.writes.Load()
		waitFor(t, 5*time.Second, "more writes on shard-1", func() bool { return l.writes.Load() > before+20 })
		l.end()
		if errs := l.failures(); len(errs) > 0 {
			t.Errorf("%d statements on shard-1 failed while shard-0's replica was blackholed: %v", len(errs), errs[0])
		}
		t.Logf("blackhole detected after %s; shard-1: %d writes, %d reads, no failure", detected.Round(time.Millisecond), l.writes.Load(), l.reads.Load())
		relay.Resume()
		waitFor(t, 10*time.Second, "the replica back", func() bool {
			st := shardStatus(t, e.sc, "shard-0")
			return len(st.Hosts) == 2 && st.Hosts[1].Up
		})
	})

	t.Run("AKilledPrimaryFailsOnlyTheWritesInFlightAndLosesNoAcknowledgedWrite", func(t *testing.T) {
		sh := srv.Shards[1]
		const writers = 4
		teams := map[int]pgtype.UUID{}
		for w := range writers {
			teams[w+10] = b
		}
		l := startLoad(t, e.sc, teams, []pgtype.UUID{a, b, a})
		waitFor(t, 10*time.Second, "load running", func() bool { return l.writes.Load() > 100 && l.reads.Load() > 50 })
		// A read running on the primary at the kill runs again once the
		// shard has a primary.
		onPrimary := e.sc.connect(t, "")
		slow := make(chan error, 1)
		var slowPort int
		go func() {
			slow <- onPrimary.QueryRow(ctx, "/* brownie:role=primary */ SELECT inet_server_port() FROM (SELECT count(*) FROM items WHERE team_id = $1) s, pg_sleep(2)", b).Scan(&slowPort)
		}()
		waitFor(t, 10*time.Second, "the slow read running on shard-1's primary", func() bool {
			out, err := sh.Primary.Exec(ctx, "brownie_metadata", "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()")
			return err == nil && out == "1"
		})
		if err := sh.Primary.KillHard(); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		// Writes to shard-1 wait for a primary; /ready stays 200.
		waitFor(t, 10*time.Second, "writes waiting for shard-1's primary", func() bool {
			return shardStatus(t, e.sc, "shard-1").WaitingForPrimary > 0
		})
		if code, body := e.sc.get(t, "/ready"); code != 200 {
			t.Errorf("/ready = %d during the failover: %s", code, body)
		}
		// The shard map is reloaded during the failover (a team moves to
		// shard-0): the reload neither fails nor releases the waiters.
		reloads := func() string {
			_, body := e.sc.get(t, "/metrics")
			for line := range strings.Lines(body) {
				if strings.HasPrefix(line, `brownie_sidecar_shard_map_reloads_total{result="ok"}`) {
					return line
				}
			}
			return ""
		}
		before := reloads()
		moved := e.teamOn(t, "shard-1")
		writeFileAtomic(t, mapFile, failoverMap(srv, relay, fmt.Sprintf("%q: shard-0", uuidText(moved))))
		waitFor(t, 10*time.Second, "the map reloaded", func() bool { return reloads() != before })
		c := e.sc.connect(t, "")
		if w, _ := servedBy(t, e, c, "/* brownie:role=primary */ "+where, moved); w != "shard-0/primary" {
			t.Errorf("the team moved by the reload is served by %s", w)
		}
		// The synchronous standby is promoted a second after the kill.
		time.Sleep(time.Until(killed.Add(time.Second)))
		if err := sh.Replica.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		promoted := time.Now()
		waitFor(t, 10*time.Second, "writes after the promotion", func() bool {
			_, ok := l.firstAckAfter(promoted)
			return ok
		})
		resumed, _ := l.firstAckAfter(promoted)
		select {
		case err := <-slow:
			if err != nil || e.ports[slowPort] != "shard-1/replica" {
				t.Errorf("the read in flight on the killed primary: served by %q, error %v; want an answer from the promoted replica", e.ports[slowPort], err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the read in flight on the killed primary did not answer")
		}
		done := l.writes.Load()
		waitFor(t, 5*time.Second, "more writes on the promoted replica", func() bool { return l.writes.Load() > done+50 })
		l.end()

		errs := l.failures()
		for _, err := range errs {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				t.Errorf("a failure without an ErrorResponse: %v", err)
			}
		}
		if len(errs) > writers {
			t.Errorf("%d failures, more than the %d writes in flight at the kill: %v", len(errs), writers, errs)
		}
		if n := l.readErr.Load(); n != 0 {
			t.Errorf("%d reads failed", n)
		}
		if d := resumed.Sub(promoted); d > time.Second {
			t.Errorf("writes resumed %s after the promotion", d)
		}
		st := shardStatus(t, e.sc, "shard-1")
		if st.Primary != fmt.Sprintf("127.0.0.1:%d", sh.Replica.Port()) || !st.PrimaryOK {
			t.Errorf("shard-1 after the failover: %+v", st)
		}
		code, metrics := e.sc.get(t, "/metrics")
		if code != 200 {
			t.Errorf("/metrics = %d: %.500s", code, metrics)
		}
		for _, want := range []string{
			`brownie_sidecar_failover_promotions_total{decision="accepted",shard="shard-1",standby="synchronous"} 1`,
			`brownie_sidecar_failover_waiting{shard="shard-1"} 0`,
			`brownie_sidecar_failover_waits_total{result="resumed",shard="shard-1"}`,
		} {
			if !strings.Contains(metrics, want) {
				var got []string
				for line := range strings.Lines(metrics) {
					if strings.Contains(line, "failover") {
						got = append(got, line)
					}
				}
				t.Errorf("metrics lack %s; failover metrics:\n%s", want, strings.Join(got, ""))
			}
		}
		if !strings.Contains(e.sc.logs.String(), "no acknowledged write lost") {
			t.Error("the log does not say the failover lost no acknowledged write")
		}

		// Every acknowledged write is on the promoted replica, row by row.
		out, err := sh.Replica.Exec(ctx, "brownie_metadata", "SELECT id FROM items WHERE id >= 10000000")
		if err != nil {
			t.Fatal(err)
		}
		have := map[int64]bool{}
		for _, f := range strings.Fields(out) {
			id, _ := strconv.ParseInt(f, 10, 64)
			have[id] = true
		}
		l.mu.Lock()
		lost := 0
		for id := range l.acked {
			if id >= 10_000_000 && !have[id] {
				lost++
			}
		}
		acked := len(l.acked)
		l.mu.Unlock()
		if lost != 0 {
			t.Errorf("%d of %d acknowledged writes are missing on the promoted replica", lost, acked)
		}
		t.Logf("%d writes acknowledged, %d lost, %d failures (%d writes in flight at most), %d reads, 0 read errors; writes resumed %s after the promotion",
			acked, lost, len(errs), writers, l.reads.Load(), resumed.Sub(promoted).Round(time.Millisecond))
	})

	t.Run("ASlowOrResetReplicaFailsNoRead", func(t *testing.T) {
		c := e.sc.connect(t, "")
		waitFor(t, 10*time.Second, "a read on shard-0's replica", func() bool {
			w, _ := servedBy(t, e, c, where, a)
			return w == "shard-0/replica"
		})
		l := startLoad(t, e.sc, map[int]pgtype.UUID{30: b}, []pgtype.UUID{a, a, a})
		waitFor(t, 10*time.Second, "load running", func() bool { return l.writes.Load() > 20 && l.reads.Load() > 50 })
		_, before := e.sc.get(t, "/metrics")
		// A slow replica (every packet held 100 ms each way) serves its
		// reads late, and is not taken for dead.
		relay.SetDelay(100 * time.Millisecond)
		reads := l.reads.Load()
		waitFor(t, 10*time.Second, "reads through the slow replica", func() bool { return l.reads.Load() > reads+20 })
		if st := shardStatus(t, e.sc, "shard-0"); len(st.Hosts) != 2 || !st.Hosts[1].Up {
			t.Errorf("the slow replica was marked down: %+v", st)
		}
		relay.SetDelay(0)
		// Connections reset under running reads and idle sessions: the
		// reads run again elsewhere, the sessions take new connections.
		for range 3 {
			waitFor(t, 10*time.Second, "connections to the replica", func() bool { return relay.Conns() > 1 })
			relay.Reset()
			reads := l.reads.Load()
			waitFor(t, 10*time.Second, "reads after the reset", func() bool { return l.reads.Load() > reads+30 })
		}
		l.end()
		if errs := l.failures(); len(errs) != 0 {
			t.Errorf("%d statements failed with shard-0's replica slow, then reset: %v", len(errs), errs)
		}
		_, after := e.sc.get(t, "/metrics")
		lost := func(body string) (n float64) {
			for line := range strings.Lines(body) {
				if strings.HasPrefix(line, "brownie_sidecar_upstream_lost_total{") && strings.Contains(line, `shard="shard-0"`) && strings.Contains(line, `role="replica"`) {
					f := strings.Fields(line)
					v, _ := strconv.ParseFloat(f[len(f)-1], 64)
					n += v
				}
			}
			return n
		}
		if lost(after) == lost(before) {
			t.Error("the resets lost no replica connection under a session: they tested nothing")
		}
	})

	t.Run("AKilledReplicaFailsNoStatement", func(t *testing.T) {
		sh := srv.Shards[0]
		c := e.sc.connect(t, "")
		waitFor(t, 10*time.Second, "a read on shard-0's replica", func() bool {
			w, _ := servedBy(t, e, c, where, a)
			return w == "shard-0/replica"
		})
		// A read running on the replica when it dies runs again on the
		// primary: the client gets its answer.
		type answer struct {
			port int
			err  error
		}
		slow := make(chan answer, 1)
		started := time.Now()
		go func() {
			var port int
			err := c.QueryRow(ctx, "SELECT inet_server_port() FROM (SELECT count(*) FROM items WHERE team_id = $1) s, pg_sleep(3)", a).Scan(&port)
			slow <- answer{port, err}
		}()
		waitFor(t, 10*time.Second, "the slow read running on shard-0's replica", func() bool {
			out, err := sh.Replica.Exec(ctx, "brownie_metadata", "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()")
			return err == nil && out == "1"
		})
		// Readers of the shard meanwhile, on other sessions (its writes wait
		// for the synchronous standby being killed: Postgres's rule), and
		// writers of the other shard.
		l := startLoad(t, e.sc, map[int]pgtype.UUID{20: b, 21: b}, []pgtype.UUID{a, a, a})
		waitFor(t, 10*time.Second, "load running", func() bool { return l.writes.Load() > 20 && l.reads.Load() > 50 })
		t.Logf("killing the replica %s after the slow read started", time.Since(started).Round(time.Millisecond))
		if err := sh.Replica.Kill(); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-slow:
			if got.err != nil || e.ports[got.port] != "shard-0/primary" {
				t.Errorf("the read in flight at the replica's death: served by %q (%d) after %s, error %v; want an answer from shard-0's primary; ports %v", e.ports[got.port], got.port, time.Since(started), got.err, e.ports)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the read in flight at the replica's death did not answer")
		}
		reads := l.reads.Load()
		waitFor(t, 10*time.Second, "reads after the replica's death", func() bool { return l.reads.Load() > reads+50 })
		l.end()
		if errs := l.failures(); len(errs) != 0 {
			t.Errorf("%d statements failed after shard-0's replica died: %v", len(errs), errs)
		}
		_, metrics := e.sc.get(t, "/metrics")
		if !strings.Contains(metrics, `brownie_sidecar_upstream_lost_total{outcome="retried",role="replica",shard="shard-0"}`) {
			t.Error("metrics do not count the retried read")
		}
	})

	t.Run("ACheckLeftUnansweredWhileThePrimaryServesPooledRequestsLeavesItUp", func(t *testing.T) {
		// The health check's own backend on shard-0's primary is stopped
		// (SIGSTOP): its check gets no answer, while the pooled
		// connections' backends answer the reads (shard-0's replica is
		// gone, so its reads go to the primary; its writes would wait for
		// the synchronous standby). A busy host, not a silent one: it
		// stays up, and the load is not disturbed.
		sh := srv.Shards[0]
		l := startLoad(t, e.sc, nil, []pgtype.UUID{a, a})
		waitFor(t, 10*time.Second, "load running", func() bool { return l.reads.Load() > 50 })
		out, err := sh.Primary.Exec(ctx, "brownie_metadata",
			"SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name = '"+health.AppName+"'")
		if err != nil || out == "" {
			t.Fatalf("the check connection's backend on shard-0's primary: %q, %v", out, err)
		}
		var pids []int
		for _, f := range strings.Fields(out) {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
		timeouts := func(verdict string) float64 {
			_, body := e.sc.get(t, "/metrics")
			v, _ := metricValue(body, fmt.Sprintf(`brownie_sidecar_health_check_timeouts_total{addr="127.0.0.1:%d",shard="shard-0",verdict="%s"}`,
				sh.Primary.Port(), verdict))
			return v
		}
		busy, silent := timeouts("busy"), timeouts("silent")
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatalf("SIGSTOP %d: %v", pid, err)
			}
		}
		stopped := true
		resume := func() {
			if stopped {
				for _, pid := range pids {
					_ = syscall.Kill(pid, syscall.SIGCONT)
				}
				stopped = false
			}
		}
		defer resume()
		primaryDown := false
		waitFor(t, 10*time.Second, "a check of shard-0's primary timed out", func() bool {
			primaryDown = primaryDown || !shardStatus(t, e.sc, "shard-0").PrimaryOK
			return timeouts("busy")+timeouts("silent") > busy+silent
		})
		resume()
		if b, s := timeouts("busy"), timeouts("silent"); b != busy+1 || s != silent {
			t.Errorf("verdicts of shard-0's primary: busy %v→%v, silent %v→%v; want one busy", busy, b, silent, s)
		}
		// The next check runs on a new connection and answers.
		before := l.reads.Load()
		waitFor(t, 5*time.Second, "more reads on shard-0", func() bool { return l.reads.Load() > before+20 })
		if primaryDown || !shardStatus(t, e.sc, "shard-0").PrimaryOK {
			t.Error("shard-0's primary was reported down for a check its pooled connections' answers showed busy")
		}
		l.end()
		if errs := l.failures(); len(errs) > 0 {
			t.Errorf("%d statements failed while a check of their primary went unanswered: %v", len(errs), errs[0])
		}
	})
}
