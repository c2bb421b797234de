package health

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/router"
)

// runChecker runs h until the test ends and returns once its first
// round of checks has ended.
func runChecker(t *testing.T, h *Checker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	first := h.waitRound() // before Run starts, so the first round cannot be missed
	go func() {
		defer close(done)
		h.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("no round of checks ended")
	}
}

func TestWaitPrimaryReturnsThePromotedStandbyAsSoonAsAFastCheckSeesIt(t *testing.T) {
	hosts := newFakeHosts()
	cfg := defaultConfig
	cfg.Interval = time.Hour // rounds only on Recheck and, while a shard has no primary, every 100ms
	h, met := newTestChecker(t, cfg, hosts)
	runChecker(t, h)
	if p, err := h.WaitPrimary(context.Background(), "shard-a", router.Host{}); err != nil || p.Addr != primaryA {
		t.Fatalf("WaitPrimary with the primary up = %v, %v", p, err)
	}

	// The primary dies: a caller that failed to reach it waits.
	hosts.mu.Lock()
	hosts.refused[primaryA], hosts.broken[primaryA] = true, true
	hosts.mu.Unlock()
	got := make(chan router.Host, 1)
	go func() {
		p, err := h.WaitPrimary(context.Background(), "shard-a", router.Host{Addr: primaryA})
		if err != nil {
			t.Errorf("WaitPrimary: %v", err)
		}
		got <- p
	}()
	deadline := time.Now().Add(5 * time.Second)
	for h.PrimaryOK("shard-a") || testutil.ToFloat64(met.FailoverWaiting.WithLabelValues("shard-a")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the checks did not see the dead primary, or nobody waits")
		}
		<-h.waitRound()
	}
	if st := h.Status()[0]; st.WaitingForPrimary != 1 || st.PrimaryDownSince == nil {
		t.Errorf("Status during the wait = %+v", st)
	}
	select {
	case p := <-got:
		t.Fatalf("WaitPrimary returned %v with no primary", p)
	case <-time.After(300 * time.Millisecond):
	}

	// standbyA is promoted: the waiter gets it within a few fast rounds.
	hosts.mu.Lock()
	hosts.rows[standbyA] = []string{"f", "0/80", "", ""}
	hosts.mu.Unlock()
	promoted := time.Now()
	select {
	case p := <-got:
		if p.Addr != standbyA {
			t.Fatalf("WaitPrimary = %v, want %s", p, standbyA)
		}
		if d := time.Since(promoted); d > time.Second {
			t.Errorf("the promotion was seen after %s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitPrimary did not return after the promotion")
	}
	if n := testutil.ToFloat64(met.FailoverWaits.WithLabelValues("shard-a", "resumed")); n != 2 {
		t.Errorf("resumed waits = %v, want 2", n)
	}
	if n := testutil.ToFloat64(met.FailoverWaiting.WithLabelValues("shard-a")); n != 0 {
		t.Errorf("waiting gauge = %v after the wait", n)
	}
}

func TestWaitPrimaryGivesUpWithTheShardsProblemWhenItsContextEnds(t *testing.T) {
	hosts := newFakeHosts()
	hosts.refused[primaryB] = true
	cfg := defaultConfig
	cfg.Interval = time.Hour
	h, met := newTestChecker(t, cfg, hosts)
	runChecker(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := h.WaitPrimary(ctx, "shard-b", router.Host{})
	if err == nil || !strings.Contains(err.Error(), "shard-b") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("WaitPrimary = %v, want the shard and its primary's error", err)
	}
	if n := testutil.ToFloat64(met.FailoverWaits.WithLabelValues("shard-b", "timed_out")); n != 1 {
		t.Errorf("timed-out waits = %v", n)
	}
	if err := h.Ready(); err != nil {
		t.Errorf("Ready = %v while another shard serves", err)
	}
}

func TestASilentHostDoesNotDelayTheOthersChecks(t *testing.T) {
	hosts := newFakeHosts()
	cfg := defaultConfig
	cfg.Interval = 50 * time.Millisecond
	cfg.Timeout = 2 * time.Second
	core, logs := observer.New(zap.WarnLevel)
	h, _ := newLoggingChecker(t, cfg, hosts, zap.New(core))
	runChecker(t, h)
	// standbyB stops answering without closing its connection; standbyA is
	// promoted meanwhile after primaryA dies: rounds keep publishing.
	hosts.mu.Lock()
	hosts.silent[standbyB] = true
	hosts.refused[primaryA], hosts.broken[primaryA] = true, true
	hosts.mu.Unlock()
	start := time.Now()
	for h.PrimaryOK("shard-a") {
		<-h.waitRound()
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the dead primary was seen after %s, with a silent host in the map", d)
	}
	// The silent host is down once its check times out, within Timeout.
	for {
		st := h.Status()[0]
		if !st.Hosts[2].Up {
			break
		}
		if time.Since(start) > cfg.Timeout+time.Second {
			t.Fatalf("the silent host is still up after %s", time.Since(start))
		}
		<-h.waitRound()
	}
	if d := time.Since(start); d < cfg.Timeout/2 {
		t.Errorf("the silent host was marked down after %s, before its check could time out", d)
	}
	// The event says how long the check waited, against what it could.
	var found bool
	for _, e := range logs.FilterMessage("host unhealthy").AllUntimed() {
		f := e.ContextMap()
		if f["addr"] != standbyB {
			continue
		}
		found = true
		took, _ := f["check_took"].(time.Duration)
		budget, _ := f["check_budget"].(time.Duration)
		if budget < cfg.Timeout/2 || budget > cfg.Timeout {
			t.Errorf("check_budget = %s, want between half the timeout and the timeout (%s)", budget, cfg.Timeout)
		}
		if took < budget {
			t.Errorf("check_took = %s, before its budget of %s ran out", took, budget)
		}
	}
	if !found {
		t.Errorf("no host unhealthy event for the silent host; events: %v", logs.All())
	}
}

func TestASynchronousShardMovesWritesOnlyToItsPrimarysSynchronousStandby(t *testing.T) {
	m, err := router.ParseMap([]byte(`
shards:
  - {name: shard-a, primary: "127.0.0.1:5001", replicas: ["127.0.0.1:5002", "127.0.0.1:5003"], synchronous: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(m)
	if err != nil {
		t.Fatal(err)
	}
	met := metrics.New(prometheus.NewRegistry())
	h := New(defaultConfig, Deps{Router: r, Metrics: met, Log: zap.NewNop()})
	now := time.Now()
	round := func(primaryUp bool, promote string) []*hostHealth {
		p := result("shard-a", primaryA, router.Primary, false, 100, now)
		p.Standbys = map[string]string{"rep-a": "sync", "rep-b": "async"}
		if !primaryUp {
			p = down("shard-a", primaryA, router.Primary, now)
		}
		a := result("shard-a", standbyA, router.Replica, true, 100, now)
		a.StandbyName = "rep-a"
		b := result("shard-a", standbyB, router.Replica, true, 100, now)
		b.StandbyName = "rep-b"
		for _, s := range []*hostHealth{a, b} {
			if s.Host.Addr == promote {
				s.InRecovery, s.StandbyName = false, ""
			}
		}
		return []*hostHealth{p, a, b}
	}
	h.publish(m, round(true, ""))
	if st := h.Status()[0]; !st.Synchronous || st.Hosts[1].SyncState != "sync" || st.Hosts[2].SyncState != "async" {
		t.Fatalf("Status = %+v, want the standbys' sync states", st)
	}
	if v := testutil.ToFloat64(met.SyncStandby.WithLabelValues("shard-a", standbyA)); v != 1 {
		t.Errorf("synchronous standby gauge of %s = %v", standbyA, v)
	}

	// The asynchronous standby is promoted: refused, writes wait.
	h.publish(m, round(false, standbyB))
	if h.PrimaryOK("shard-a") {
		t.Fatalf("writes moved to %v, an asynchronous standby", h.Primary("shard-a", router.Host{}))
	}
	if st := h.Status()[0]; !strings.Contains(st.Problem, "was not seen as a synchronous standby") {
		t.Errorf("problem = %q", st.Problem)
	}
	if v := testutil.ToFloat64(met.Promotions.WithLabelValues("shard-a", "asynchronous", "refused")); v != 1 {
		t.Errorf("refused promotions = %v", v)
	}
	h.publish(m, round(false, standbyB)) // counted once
	if v := testutil.ToFloat64(met.Promotions.WithLabelValues("shard-a", "asynchronous", "refused")); v != 1 {
		t.Errorf("refused promotions = %v after a second round", v)
	}

	// The synchronous one is promoted: accepted.
	h.publish(m, round(false, standbyA))
	if p := h.Primary("shard-a", router.Host{}); !h.PrimaryOK("shard-a") || p.Addr != standbyA {
		t.Fatalf("Primary = %v (ok %v), want the synchronous standby %s", p, h.PrimaryOK("shard-a"), standbyA)
	}
	if v := testutil.ToFloat64(met.Promotions.WithLabelValues("shard-a", "synchronous", "accepted")); v != 1 {
		t.Errorf("accepted promotions = %v", v)
	}
}

func TestASynchronousShardWithoutReplicationStateAcceptsNoPromotion(t *testing.T) {
	hosts := newFakeHosts() // no replication_state() anywhere
	m, err := router.ParseMap([]byte(`
shards:
  - {name: shard-a, primary: "127.0.0.1:5001", replicas: ["127.0.0.1:5002"], synchronous: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(m)
	if err != nil {
		t.Fatal(err)
	}
	met := metrics.New(prometheus.NewRegistry())
	h := New(defaultConfig, Deps{Router: r, Metrics: met, Log: zap.NewNop(), Dial: hosts.dial})
	h.round(context.Background())
	if !h.PrimaryOK("shard-a") {
		t.Fatal("a primary without replication_state() is not usable")
	}
	hosts.mu.Lock()
	hosts.refused[primaryA], hosts.broken[primaryA] = true, true
	hosts.rows[standbyA] = []string{"f", "0/80", "", ""}
	hosts.mu.Unlock()
	h.round(context.Background())
	if h.PrimaryOK("shard-a") {
		t.Fatal("writes moved to a promoted host whose synchronous state was never known")
	}
	if v := testutil.ToFloat64(met.Promotions.WithLabelValues("shard-a", "unknown", "refused")); v != 1 {
		t.Errorf("refused promotions = %v", v)
	}

	// With the state readable, a synchronous standby's promotion is taken.
	hosts.mu.Lock()
	hosts.refused[primaryA], hosts.broken[primaryA] = false, false
	hosts.rows[standbyA] = []string{"t", "0/64", "0/64", ""}
	hosts.repl[primaryA] = [][]string{{"standby", "rep-a", "streaming", "sync"}}
	hosts.repl[standbyA] = [][]string{{"self", "rep-a", "streaming", ""}}
	hosts.mu.Unlock()
	h.round(context.Background())
	hosts.mu.Lock()
	hosts.refused[primaryA], hosts.broken[primaryA] = true, true
	hosts.rows[standbyA] = []string{"f", "0/80", "", ""}
	hosts.mu.Unlock()
	h.round(context.Background())
	if p := h.Primary("shard-a", router.Host{}); !h.PrimaryOK("shard-a") || p.Addr != standbyA {
		t.Fatalf("Primary = %v (ok %v), want %s", p, h.PrimaryOK("shard-a"), standbyA)
	}
}

func TestHostDownIsReportedOncePerOutage(t *testing.T) {
	hosts := newFakeHosts()
	m, _ := router.ParseMap([]byte(testMapYAML))
	r, _ := router.New(m)
	var downs []string
	h := New(defaultConfig, Deps{Router: r, Metrics: metrics.New(prometheus.NewRegistry()), Log: zap.NewNop(), Dial: hosts.dial,
		HostDown: func(addr string) { downs = append(downs, addr) }})
	h.round(context.Background())
	hosts.mu.Lock()
	hosts.refused[standbyA], hosts.broken[standbyA] = true, true
	hosts.mu.Unlock()
	h.round(context.Background())
	h.round(context.Background())
	if len(downs) != 1 || downs[0] != standbyA {
		t.Errorf("HostDown calls = %v, want one for %s", downs, standbyA)
	}
}

// TestATimedOutCheckOfAHostAnsweringPooledRequestsKeepsItUp: a check left
// unanswered while the host answers pooled requests found it busy, not
// gone: the host stays up and its pooled connections stay open, for up
// to maxBusyAge timeouts after its last answered check. With no pooled
// answer meanwhile the host is silent and marked down at once.
func TestATimedOutCheckOfAHostAnsweringPooledRequestsKeepsItUp(t *testing.T) {
	hosts := newFakeHosts()
	m, _ := router.ParseMap([]byte(testMapYAML))
	r, _ := router.New(m)
	met := metrics.New(prometheus.NewRegistry())
	cfg := defaultConfig
	cfg.Interval = time.Hour // rounds on Recheck (and every 100ms while a shard has no primary)
	cfg.Timeout = 150 * time.Millisecond
	var mu sync.Mutex
	var downs []string
	pooled := true // the pool's connections to primaryA get answers
	h := New(cfg, Deps{Router: r, Metrics: met, Log: zap.NewNop(), Dial: hosts.dial,
		HostDown: func(addr string) { mu.Lock(); downs = append(downs, addr); mu.Unlock() },
		Answered: func(addr string) time.Time {
			mu.Lock()
			defer mu.Unlock()
			if addr == primaryA && pooled {
				return time.Now() // an answer just now, late in the check's wait
			}
			return time.Time{}
		}})
	runChecker(t, h)
	recheck := func() {
		t.Helper()
		round := h.waitRound()
		h.Recheck()
		select {
		case <-round:
		case <-time.After(5 * time.Second):
			t.Fatal("no round of checks ended")
		}
	}
	verdicts := func(v string) float64 {
		return testutil.ToFloat64(met.HealthCheckTimeouts.WithLabelValues("shard-a", primaryA, v))
	}
	downCalls := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string{}, downs...) }

	hosts.mu.Lock()
	hosts.silent[primaryA] = true
	hosts.mu.Unlock()
	recheck()
	if !h.PrimaryOK("shard-a") || verdicts("busy") != 1 || verdicts("silent") != 0 {
		t.Fatalf("after a busy check: primary ok %v, busy %v, silent %v; want ok, 1, 0",
			h.PrimaryOK("shard-a"), verdicts("busy"), verdicts("silent"))
	}
	if d := downCalls(); len(d) != 0 {
		t.Errorf("HostDown(%v) for a busy host: its pooled connections were closed", d)
	}
	if v := testutil.ToFloat64(met.HostUp.WithLabelValues("shard-a", primaryA)); v != 1 {
		t.Errorf("host_up = %v for a busy host", v)
	}

	// Busy checks go on only while the last answered one is recent.
	deadline := time.Now().Add(5 * time.Second)
	for h.PrimaryOK("shard-a") && time.Now().Before(deadline) {
		recheck()
	}
	if h.PrimaryOK("shard-a") {
		t.Fatal("a host that answered no check for 5s is still up")
	}
	// The view that said so may come from a round begun on a kick left
	// pending, still calling HostDown: the end of the next round is after it.
	recheck()
	// (Once the shard has no primary, rounds run every 100ms on their own,
	// so more silent verdicts may follow.)
	if b := verdicts("busy"); b < maxBusyAge-1 || verdicts("silent") < 1 {
		t.Errorf("verdicts: busy %v, silent %v; want at least %d busy, then silent", b, verdicts("silent"), maxBusyAge-1)
	}
	if d := downCalls(); len(d) != 1 || d[0] != primaryA {
		t.Errorf("HostDown calls = %v, want one for %s", d, primaryA)
	}

	// Answering again, then silent with no pooled answer: down at once.
	hosts.mu.Lock()
	hosts.silent[primaryA] = false
	hosts.mu.Unlock()
	for !h.PrimaryOK("shard-a") && time.Now().Before(deadline.Add(5*time.Second)) {
		recheck()
	}
	if !h.PrimaryOK("shard-a") {
		t.Fatal("the primary answering again is not seen")
	}
	mu.Lock()
	pooled = false
	mu.Unlock()
	hosts.mu.Lock()
	hosts.silent[primaryA] = true
	hosts.mu.Unlock()
	busy, silent := verdicts("busy"), verdicts("silent")
	recheck()
	if h.PrimaryOK("shard-a") || verdicts("busy") != busy || verdicts("silent") <= silent {
		t.Errorf("silent host: primary ok %v, busy %v→%v, silent %v→%v; want down, silent, not busy",
			h.PrimaryOK("shard-a"), busy, verdicts("busy"), silent, verdicts("silent"))
	}
}
