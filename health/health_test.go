package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The test map: shard-a has two standbys, shard-b none.
const (
	primaryA = "127.0.0.1:5001"
	standbyA = "127.0.0.1:5002"
	standbyB = "127.0.0.1:5003" // second standby of shard-a
	primaryB = "127.0.0.1:5011"
)

const testMapYAML = `
key_type: uuid
shards:
  - {name: shard-a, primary: "127.0.0.1:5001", replicas: ["127.0.0.1:5002", "127.0.0.1:5003"]}
  - {name: shard-b, primary: "127.0.0.1:5011"}
tables:
  incidents: {sharded_by: team_id}
`

var defaultConfig = Config{
	Interval: time.Hour, Timeout: time.Second, BanTime: time.Hour,
	MaxLag: 10 * time.Second, MaxLagBytes: 1 << 20, ReplicaSelection: "round_robin",
}

// newTestChecker returns a checker over the test map whose connections
// come from hosts (nil: dialling fails).
func newTestChecker(t *testing.T, cfg Config, hosts *fakeHosts) (*Checker, *metrics.Metrics) {
	t.Helper()
	return newLoggingChecker(t, cfg, hosts, zap.NewNop())
}

// newLoggingChecker is newTestChecker with the checker logging to log.
func newLoggingChecker(t *testing.T, cfg Config, hosts *fakeHosts, log *zap.Logger) (*Checker, *metrics.Metrics) {
	t.Helper()
	m, err := router.ParseMap([]byte(testMapYAML))
	if err != nil {
		t.Fatalf("ParseMap: %v", err)
	}
	r, err := router.New(m)
	if err != nil {
		t.Fatalf("router.New: %v", err)
	}
	met := metrics.New(prometheus.NewRegistry())
	dial := func(context.Context, router.Target) (Conn, error) { return nil, errors.New("no hosts") }
	if hosts != nil {
		dial = hosts.dial
	}
	return New(cfg, Deps{Router: r, Metrics: met, Log: log, Dial: dial}), met
}

// result is a check that found host up at WAL position lsn (a standby
// when recovery), sent at at.
func result(shard, addr string, role router.Role, recovery bool, lsn uint64, at time.Time) *hostHealth {
	return &hostHealth{Host: router.Host{Addr: addr}, Shard: shard, Configured: role, Checked: true,
		Up: true, InRecovery: recovery, LSN: lsn, ReceiveLSN: lsn, CheckedAt: at}
}

// down is a check that could not reach host.
func down(shard, addr string, role router.Role, at time.Time) *hostHealth {
	return &hostHealth{Host: router.Host{Addr: addr}, Shard: shard, Configured: role, Checked: true,
		LastError: "connection refused", CheckedAt: at}
}

// healthyRound is every host up, the map's primaries at lsn and both
// standbys replayed to standbyLSN.
func healthyRound(lsn, standbyLSN uint64, at time.Time) []*hostHealth {
	return []*hostHealth{
		result("shard-a", primaryA, router.Primary, false, lsn, at),
		result("shard-a", standbyA, router.Replica, true, standbyLSN, at),
		result("shard-a", standbyB, router.Replica, true, standbyLSN, at),
		result("shard-b", primaryB, router.Primary, false, lsn, at),
	}
}

func TestParseLSNReadsPostgresTextForm(t *testing.T) {
	for in, want := range map[string]uint64{"0/0": 0, "0/3016000": 0x3016000, "1/FF": 1<<32 | 0xff, "AB/CDEF0123": 0xAB<<32 | 0xCDEF0123} {
		got, err := parseLSN(in)
		if err != nil || got != want {
			t.Errorf("parseLSN(%q) = %x, %v; want %x", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "3016000", "x/1", "1/x", "1/123456789"} {
		if _, err := parseLSN(bad); err == nil {
			t.Errorf("parseLSN(%q) accepted", bad)
		}
	}
}

func TestBeforeTheFirstRoundWritesGoToTheMapsPrimaryAndReadsToo(t *testing.T) {
	h, _ := newTestChecker(t, defaultConfig, nil)
	configured := router.Host{Addr: primaryA}
	if got := h.Primary("shard-a", configured); got != configured {
		t.Errorf("Primary = %v, want the map's %v", got, configured)
	}
	if !h.PrimaryOK("shard-a") {
		t.Error("PrimaryOK is false before any check")
	}
	if r, ok := h.Replica("shard-a", time.Time{}, nil); ok {
		t.Errorf("Replica = %v before any check", r)
	}
	if err := h.Ready(); err == nil {
		t.Error("Ready before any check")
	}
	st := h.Status()
	if len(st) != 2 || st[0].Primary != primaryA || st[0].PrimaryOK || len(st[0].Hosts) != 0 {
		t.Errorf("Status = %+v", st)
	}
}

func TestReadsGoRoundRobinToStandbysWithinTheLagLimits(t *testing.T) {
	h, met := newTestChecker(t, defaultConfig, nil)
	now := time.Now()
	h.publish(h.router.Map(), healthyRound(100, 100, now))
	if err := h.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	seen := map[string]int{}
	for range 4 {
		r, ok := h.Replica("shard-a", time.Time{}, nil)
		if !ok {
			t.Fatal("no replica for shard-a")
		}
		seen[r.Addr]++
	}
	if seen[standbyA] != 2 || seen[standbyB] != 2 {
		t.Errorf("replicas chosen %v, want each standby twice", seen)
	}
	if r, ok := h.Replica("shard-b", time.Time{}, nil); ok {
		t.Errorf("Replica(shard-b) = %v: it has no standby", r)
	}

	// standbyB falls 2 MiB behind (over MaxLagBytes), then standbyA's
	// replay is 30s old with WAL still to replay (over MaxLag).
	round := healthyRound(3<<20, 3<<20, now)
	round[2].LSN = 1 << 20
	h.publish(h.router.Map(), round)
	for range 3 {
		if r, ok := h.Replica("shard-a", time.Time{}, nil); !ok || r.Addr != standbyA {
			t.Fatalf("Replica = %v, %v; want only %s", r, ok, standbyA)
		}
	}
	if got := testutil.ToFloat64(met.ReplicaLagBytes.WithLabelValues("shard-a", standbyB)); got != 2<<20 {
		t.Errorf("lag bytes metric of %s = %v, want %d", standbyB, got, 2<<20)
	}
	round = healthyRound(100, 100, now)
	round[1].LagSeconds = 30
	round[2].LSN = 50
	h.publish(h.router.Map(), round)
	if r, ok := h.Replica("shard-a", time.Time{}, nil); !ok || r.Addr != standbyB {
		t.Errorf("Replica = %v, %v; want %s (50 bytes behind, in time)", r, ok, standbyB)
	}
	st := h.Status()[0]
	if st.Hosts[1].Role != "replica" || st.Hosts[1].LagSeconds != 30 || st.Hosts[2].LagBytes != 50 || st.Hosts[0].Role != "primary" {
		t.Errorf("Status(shard-a) = %+v", st)
	}
}

func TestLeastBusyPicksTheStandbyWithFewestSessions(t *testing.T) {
	cfg := defaultConfig
	cfg.ReplicaSelection = "least_busy"
	h, _ := newTestChecker(t, cfg, nil)
	h.publish(h.router.Map(), healthyRound(100, 100, time.Now()))
	busy := func(host router.Host) int { return map[string]int{standbyA: 5, standbyB: 2}[host.Addr] }
	for range 3 {
		if r, ok := h.Replica("shard-a", time.Time{}, busy); !ok || r.Addr != standbyB {
			t.Fatalf("Replica = %v, %v; want the less busy %s", r, ok, standbyB)
		}
	}
}

func TestReadAfterWriteWaitsForAStandbyReplayedPastTheWrite(t *testing.T) {
	h, _ := newTestChecker(t, defaultConfig, nil)
	t0 := time.Now()
	wrote := t0.Add(time.Millisecond)
	h.publish(h.router.Map(), healthyRound(100, 100, t0))
	if r, ok := h.Replica("shard-a", wrote, nil); ok {
		t.Fatalf("Replica = %v: no primary position was read after the write yet", r)
	}
	// The next check, sent after the write, finds the primary at 200 and
	// only standbyB replayed that far.
	round := healthyRound(200, 150, t0.Add(time.Second))
	round[2].LSN = 200
	h.publish(h.router.Map(), round)
	for range 3 {
		if r, ok := h.Replica("shard-a", wrote, nil); !ok || r.Addr != standbyB {
			t.Fatalf("Replica = %v, %v; want %s, the one past the write", r, ok, standbyB)
		}
	}
	// Without a write, both may serve.
	seen := map[string]bool{}
	for range 2 {
		r, _ := h.Replica("shard-a", time.Time{}, nil)
		seen[r.Addr] = true
	}
	if len(seen) != 2 {
		t.Errorf("replicas chosen without a write: %v", seen)
	}
}

func TestBannedAndUnreachableStandbysGetNoReads(t *testing.T) {
	h, _ := newTestChecker(t, defaultConfig, nil)
	now := time.Now()
	h.publish(h.router.Map(), healthyRound(100, 100, now))
	h.Ban(standbyA, errors.New("dial failed"))
	for range 3 {
		if r, ok := h.Replica("shard-a", time.Time{}, nil); !ok || r.Addr != standbyB {
			t.Fatalf("Replica = %v, %v; want %s (the other is banned)", r, ok, standbyB)
		}
	}
	round := healthyRound(100, 100, now)
	round[2] = down("shard-a", standbyB, router.Replica, now)
	h.publish(h.router.Map(), round)
	if r, ok := h.Replica("shard-a", time.Time{}, nil); ok {
		t.Fatalf("Replica = %v; want none (one banned, one down)", r)
	}
	// A host that failed its check stays banned after it answers again.
	h.publish(h.router.Map(), healthyRound(100, 100, now))
	if r, ok := h.Replica("shard-a", time.Time{}, nil); ok {
		t.Fatalf("Replica = %v; want none while both bans last", r)
	}
	st := h.Status()[0]
	for _, hs := range st.Hosts[1:] {
		if hs.BannedUntil == nil || !hs.BannedUntil.After(now) || !hs.Up {
			t.Errorf("Status host %+v: want up and banned", hs)
		}
	}

	// With no ban time, a ban ends at once.
	cfg := defaultConfig
	cfg.BanTime = 0
	h, _ = newTestChecker(t, cfg, nil)
	h.publish(h.router.Map(), healthyRound(100, 100, now))
	h.Ban(standbyA, errors.New("dial failed"))
	h.Ban(standbyB, errors.New("dial failed"))
	if _, ok := h.Replica("shard-a", time.Time{}, nil); !ok {
		t.Error("no replica after zero-length bans")
	}
}

func TestFailoverFollowsAPromotedStandbyAndKeepsIt(t *testing.T) {
	h, met := newTestChecker(t, defaultConfig, nil)
	configured := router.Host{Addr: primaryA}
	now := time.Now()
	h.publish(h.router.Map(), healthyRound(100, 100, now))

	// The primary is gone and standbyA was promoted.
	promoted := func(old *hostHealth) []*hostHealth {
		round := healthyRound(100, 100, now)
		round[0] = old
		round[1].InRecovery, round[1].LSN = false, 120
		return round
	}
	h.publish(h.router.Map(), promoted(down("shard-a", primaryA, router.Primary, now)))
	if got := h.Primary("shard-a", configured); got.Addr != standbyA || !h.PrimaryOK("shard-a") {
		t.Fatalf("Primary = %v (ok %v), want the promoted %s", got, h.PrimaryOK("shard-a"), standbyA)
	}
	if got := testutil.ToFloat64(met.Failovers.WithLabelValues("shard-a")); got != 1 {
		t.Errorf("failovers = %v, want 1", got)
	}
	if r, ok := h.Replica("shard-a", time.Time{}, nil); !ok || r.Addr != standbyB {
		t.Errorf("Replica = %v, %v; want %s", r, ok, standbyB)
	}
	if st := h.Status()[0]; st.Primary != standbyA || !st.PrimaryOK {
		t.Errorf("Status(shard-a) = %+v", st)
	}

	// The old primary comes back answering as a primary: the sidecar stays
	// on the one it chose while that one answers as a primary.
	h.publish(h.router.Map(), promoted(result("shard-a", primaryA, router.Primary, false, 100, now)))
	if got := h.Primary("shard-a", configured); got.Addr != standbyA {
		t.Errorf("Primary = %v after the old primary came back, want %s kept", got, standbyA)
	}

	// Nothing answers as a primary: the choice stays, flagged not OK.
	round := healthyRound(100, 100, now)
	round[0] = down("shard-a", primaryA, router.Primary, now)
	round[1] = down("shard-a", standbyA, router.Replica, now)
	h.publish(h.router.Map(), round)
	if got := h.Primary("shard-a", configured); got.Addr != standbyA || h.PrimaryOK("shard-a") {
		t.Errorf("Primary = %v (ok %v), want %s not OK", got, h.PrimaryOK("shard-a"), standbyA)
	}
	// Its remaining standby keeps serving reads.
	if r, ok := h.Replica("shard-a", time.Time{}, nil); !ok || r.Addr != standbyB {
		t.Errorf("Replica = %v, %v while the shard has no primary; want the live standby %s", r, ok, standbyB)
	}
	// The sidecar stays ready: shard-a's writes wait for a primary while
	// shard-b (and shard-a's other standby) serve; Status says why.
	if err := h.Ready(); err != nil {
		t.Errorf("Ready = %v with one shard's primary down", err)
	}
	if st := h.Status()[0]; st.PrimaryOK || st.PrimaryDownSince == nil || !strings.Contains(st.Problem, "no host of shard-a answers as a primary") {
		t.Errorf("Status(shard-a) = %+v, want the primary down since now and why", st)
	}
	if !h.PrimaryOK("shard-b") {
		t.Error("shard-b's primary reported down")
	}
}

// fakeHosts answers the health query for each address as scripted and
// counts connections. Safe for concurrent use.
type fakeHosts struct {
	mu      sync.Mutex
	rows    map[string][]string   // addr → pg_is_in_recovery, lsn, receive lsn, lag seconds
	broken  map[string]bool       // addr → its connections break on the next query
	refused map[string]bool       // addr → dialling it fails
	silent  map[string]bool       // addr → queries get no answer until the deadline
	repl    map[string][][]string // addr → replication_state() rows
	dials   map[string]int
	conns   []*fakeConn
}

func newFakeHosts() *fakeHosts {
	return &fakeHosts{rows: map[string][]string{
		primaryA: {"f", "0/64", "", ""},
		standbyA: {"t", "0/64", "0/64", "1"},
		standbyB: {"t", "0/32", "0/64", "30"},
		primaryB: {"f", "0/100", "", ""},
	}, broken: map[string]bool{}, refused: map[string]bool{}, silent: map[string]bool{}, repl: map[string][][]string{}, dials: map[string]int{}}
}

func (f *fakeHosts) dial(ctx context.Context, t router.Target) (Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("dial without a deadline")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials[t.Host.Addr]++
	if f.refused[t.Host.Addr] {
		return nil, errors.New("connection refused")
	}
	c := &fakeConn{f: f, addr: t.Host.Addr}
	f.conns = append(f.conns, c)
	return c, nil
}

func (f *fakeHosts) openConns() (n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		if !c.closed {
			n++
		}
	}
	return n
}

// fakeConn runs the health query from its fakeHosts' script; other
// statements succeed, except "fail" (a server error), "lost" (the 08006 of
// a failed read) and "begin" (leaves a transaction open).
type fakeConn struct {
	f        *fakeHosts
	addr     string
	inTx     bool
	closed   bool // guarded by f.mu
	deadline time.Time
}

func (c *fakeConn) Exec(sql string, onRow func([][]byte)) error {
	c.f.mu.Lock()
	row, broken, silent, repl := c.f.rows[c.addr], c.f.broken[c.addr], c.f.silent[c.addr], c.f.repl[c.addr]
	c.f.mu.Unlock()
	if c.deadline.IsZero() {
		return errors.New("exec without a deadline")
	}
	switch {
	case silent:
		time.Sleep(time.Until(c.deadline))
		return fmt.Errorf("read tcp: %w", os.ErrDeadlineExceeded)
	case broken:
		return io.ErrUnexpectedEOF
	case sql == replicationQuery && repl == nil:
		return pgerr.Errorf(pgerr.UndefinedObject, "function brownie_sidecar.replication_state() does not exist")
	case sql == replicationQuery:
		for _, r := range repl {
			vals := make([][]byte, len(r))
			for i, v := range r {
				if v != "" {
					vals[i] = []byte(v)
				}
			}
			onRow(vals)
		}
	case sql == "fail":
		return pgerr.Errorf(pgerr.UndefinedObject, "no such thing")
	case sql == "lost":
		// What the proxy's connection answers a read that timed out: its
		// late answer may still come.
		return pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream lost").WithCause(errors.New("i/o timeout"))
	case sql == "begin":
		c.inTx = true
	case sql == healthQuery && onRow != nil:
		vals := make([][]byte, len(row))
		for i, v := range row {
			if v != "" {
				vals[i] = []byte(v)
			}
		}
		onRow(vals)
	}
	return nil
}

func (c *fakeConn) InTransaction() bool { return c.inTx }

func (c *fakeConn) SetDeadline(t time.Time) error { c.deadline = t; return nil }

func (c *fakeConn) Close() error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.closed = true
	return nil
}

func TestChecksReadRoleWALPositionAndLagFromEachHost(t *testing.T) {
	hosts := newFakeHosts()
	h, met := newTestChecker(t, defaultConfig, hosts)
	h.round(context.Background())
	if err := h.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	st := h.Status()
	a := st[0]
	if a.Primary != primaryA || !a.PrimaryOK || len(a.Hosts) != 3 {
		t.Fatalf("Status(shard-a) = %+v", a)
	}
	// standbyA has replayed all it received: an old replay timestamp is
	// not lag. standbyB is 0x32 bytes and 30s behind.
	if hs := a.Hosts[1]; hs.Role != "replica" || hs.MapRole != "replica" || hs.LagSeconds != 0 || hs.LagBytes != 0 {
		t.Errorf("standbyA = %+v", hs)
	}
	if hs := a.Hosts[2]; hs.LagSeconds != 30 || hs.LagBytes != 0x32 {
		t.Errorf("standbyB = %+v", hs)
	}
	if r, ok := h.Replica("shard-a", time.Time{}, nil); !ok || r.Addr != standbyA {
		t.Errorf("Replica = %v, %v; want %s (the other is over MaxLag)", r, ok, standbyA)
	}
	if got := testutil.ToFloat64(met.HostUp.WithLabelValues("shard-b", primaryB)); got != 1 {
		t.Errorf("host up metric = %v", got)
	}
	if got := testutil.ToFloat64(met.HostRole.WithLabelValues("shard-a", standbyA)); got != 0 {
		t.Errorf("host role metric of a standby = %v", got)
	}

	// The next round reuses each host's connection; a broken one is closed,
	// its host marked down and dialled again next time.
	hosts.mu.Lock()
	hosts.broken[standbyA] = true
	hosts.mu.Unlock()
	h.round(context.Background())
	if hs := h.Status()[0].Hosts[1]; hs.Up || hs.LastError == "" || hs.BannedUntil == nil {
		t.Errorf("broken standbyA = %+v, want down and banned", hs)
	}
	hosts.mu.Lock()
	hosts.broken[standbyA] = false
	hosts.mu.Unlock()
	h.round(context.Background())
	hosts.mu.Lock()
	dials := hosts.dials
	hosts.mu.Unlock()
	if dials[primaryA] != 1 || dials[standbyA] != 2 {
		t.Errorf("dials = %v, want one per host and a second for the broken one", dials)
	}
	if n := hosts.openConns(); n != 4 {
		t.Errorf("%d connections open, want one per host", n)
	}
}

func TestOnHostKeepsItsConnectionUnlessItBrokeOrStayedInATransaction(t *testing.T) {
	hosts := newFakeHosts()
	h, _ := newTestChecker(t, defaultConfig, hosts)
	ctx := context.Background()
	target := router.Target{Shard: "shard-b", Role: router.Primary, Host: router.Host{Addr: primaryB}}
	var first Conn
	if err := h.OnHost(ctx, target, func(c Conn) error { first = c; return c.Exec("fail", nil) }); pgerr.From(err).Code != pgerr.UndefinedObject {
		t.Fatalf("OnHost = %v, want the server's error", err)
	}
	if fc := first.(*fakeConn); !fc.deadline.IsZero() {
		t.Error("deadline left on the connection")
	}
	var again Conn
	_ = h.OnHost(ctx, target, func(c Conn) error { again = c; return c.Exec("begin", nil) })
	if again != first {
		t.Fatal("a connection that only got a server error was not kept")
	}
	_ = h.OnHost(ctx, target, func(c Conn) error { again = c; return nil })
	if again == first || !first.(*fakeConn).closed {
		t.Fatal("a connection left in a transaction was kept")
	}
	_ = h.OnHost(ctx, target, func(c Conn) error { first = c; return c.Exec("lost", nil) })
	_ = h.OnHost(ctx, target, func(c Conn) error { again = c; return nil })
	if again == first || !first.(*fakeConn).closed {
		t.Fatal("a connection whose read failed (08006) was kept: its late answer would be read as the next check's")
	}
	hosts.mu.Lock()
	hosts.broken[primaryB] = true
	hosts.mu.Unlock()
	if err := h.OnHost(ctx, target, func(c Conn) error { return c.Exec("SELECT 1", nil) }); err == nil {
		t.Fatal("OnHost on a broken connection succeeded")
	}
	if !again.(*fakeConn).closed {
		t.Error("a broken connection was kept")
	}
}

// A check finding its connection lent to another caller (the two-phase
// recovery) waits for it rather than dial: on a loaded host a new
// connection can take longer than the check may. It dials only when the
// connection did not come back, and fails when it stays lent past the
// check's deadline.
func TestACheckWaitsForItsConnectionLentToAnotherCaller(t *testing.T) {
	hosts := newFakeHosts()
	cfg := defaultConfig
	cfg.Timeout = 2 * time.Second
	h, _ := newTestChecker(t, cfg, hosts)
	waiting := make(chan struct{}, 1)
	h.lentWait = func() { waiting <- struct{}{} }
	ctx := context.Background()
	target := router.Target{Shard: "shard-b", Role: router.Primary, Host: router.Host{Addr: primaryB}}
	var kept Conn
	if err := h.OnHost(ctx, target, func(c Conn) error { kept = c; return nil }); err != nil {
		t.Fatalf("OnHost: %v", err)
	}
	dials := func() int {
		hosts.mu.Lock()
		defer hosts.mu.Unlock()
		return hosts.dials[primaryB]
	}

	// lend starts a caller holding the kept connection until it is told to
	// give it back, with fn's error.
	lend := func() (giveBack chan error, done chan error) {
		giveBack, done = make(chan error), make(chan error, 1)
		holding := make(chan struct{})
		go func() {
			done <- h.OnHost(ctx, target, func(c Conn) error {
				if c != kept {
					t.Errorf("the caller got another connection than the kept one")
				}
				close(holding)
				return <-giveBack
			})
		}()
		<-holding
		return giveBack, done
	}
	awaitWaiting := func() {
		t.Helper()
		select {
		case <-waiting:
		case <-time.After(5 * time.Second):
			t.Fatalf("the check did not wait for its lent connection (%d dials)", dials())
		}
	}
	check := func(budget time.Duration) <-chan *hostHealth {
		res := make(chan *hostHealth, 1)
		go func() {
			res <- h.check(ctx, "shard-b", router.Host{Addr: primaryB}, router.Primary, false, time.Now().Add(budget))
		}()
		return res
	}

	// Given back: the check runs on it, and nothing is dialled.
	giveBack, done := lend()
	res := check(cfg.Timeout)
	awaitWaiting()
	giveBack <- nil
	if err := <-done; err != nil {
		t.Fatalf("the lending caller: %v", err)
	}
	if r := <-res; !r.Up {
		t.Fatalf("the check failed: %s", r.LastError)
	}
	if n := dials(); n != 1 {
		t.Errorf("%d dials, want the first only: the check dialled instead of waiting", n)
	}

	// Broken by its borrower: the check dials once it is closed.
	giveBack, done = lend()
	res = check(cfg.Timeout)
	awaitWaiting()
	giveBack <- io.ErrUnexpectedEOF
	<-done
	if r := <-res; !r.Up {
		t.Fatalf("the check after a broken connection failed: %s", r.LastError)
	}
	if n := dials(); n != 2 {
		t.Errorf("%d dials, want 2: a broken connection is replaced", n)
	}
	if !kept.(*fakeConn).closed {
		t.Error("the broken connection was kept")
	}

	// Kept past the check's deadline: the check fails when its budget ends.
	if err := h.OnHost(ctx, target, func(c Conn) error { kept = c; return nil }); err != nil {
		t.Fatalf("OnHost: %v", err)
	}
	giveBack, done = lend()
	const budget = 100 * time.Millisecond
	res = check(budget)
	awaitWaiting()
	r := <-res
	giveBack <- nil
	<-done
	if r.Up || !strings.Contains(r.LastError, "stayed in use") {
		t.Errorf("check = up %v, %q; want down, its connection in use past the deadline", r.Up, r.LastError)
	}
	if r.took < budget {
		t.Errorf("the check gave up after %s, before its budget of %s", r.took, budget)
	}
	if n := dials(); n != 2 {
		t.Errorf("%d dials, want 2: the check waited without dialling", n)
	}
}

func TestRunClosesItsConnectionsWhenItsContextEnds(t *testing.T) {
	hosts := newFakeHosts()
	cfg := defaultConfig
	cfg.Interval = 10 * time.Millisecond
	h, _ := newTestChecker(t, cfg, hosts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	round := h.waitRound()
	go func() {
		defer close(done)
		h.Run(ctx)
	}()
	select {
	case <-round:
	case <-time.After(5 * time.Second):
		t.Fatal("no round of checks ended")
	}
	<-h.waitRound() // a second, on the ticker
	cancel()
	<-done
	if n := hosts.openConns(); n != 0 {
		t.Errorf("%d connections open after Run returned", n)
	}
	// Work lent a connection afterwards does not leave it open.
	target := router.Target{Shard: "shard-b", Role: router.Primary, Host: router.Host{Addr: primaryB}}
	if err := h.OnHost(context.Background(), target, func(c Conn) error { return c.Exec("SELECT 1", nil) }); err != nil {
		t.Fatalf("OnHost after Run: %v", err)
	}
	if n := hosts.openConns(); n != 0 {
		t.Errorf("%d connections open after OnHost following Run", n)
	}
}

func TestACheckSoonAfterAnAnswerGetsTheRestOfTheTimeout(t *testing.T) {
	h := New(Config{Interval: 200 * time.Millisecond, Timeout: time.Second}, Deps{})
	start := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	for _, c := range []struct {
		name     string
		answered time.Time
		want     time.Time
	}{
		{"never answered", time.Time{}, start.Add(time.Second)},
		{"answered 150ms before", start.Add(-150 * time.Millisecond), start.Add(850 * time.Millisecond)},
		{"answered at the start", start, start.Add(time.Second)},
		{"answered 600ms before: half the timeout at least", start.Add(-600 * time.Millisecond), start.Add(time.Second)},
		{"answered long ago", start.Add(-time.Hour), start.Add(time.Second)},
	} {
		if got := h.checkDeadline(start, c.answered); !got.Equal(c.want) {
			t.Errorf("%s: deadline %s after the start, want %s", c.name, got.Sub(start), c.want.Sub(start))
		}
	}
}
