package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func s(n float64) time.Duration { return time.Duration(n * float64(time.Second)) }

func TestClassifyTellsErrorResponsesFromBareCloses(t *testing.T) {
	pe := &pgconn.PgError{Severity: "FATAL", Code: "08006", Message: "shard shard-1 has no primary: dial 127.0.0.1:15443 refused"}
	cases := []struct {
		err     error
		connect bool
		want    string
	}{
		{pe, false, "ErrorResponse FATAL 08006: shard shard-N has no primary: dial N.N.N.N:N refused"},
		{fmt.Errorf("failed to connect: %w", pe), true, "connect: ErrorResponse FATAL 08006: shard shard-N has no primary: dial N.N.N.N:N refused"},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), false, "bare close (no ErrorResponse)"},
		{errors.New("failed to receive message: unexpected EOF"), false, "bare close (no ErrorResponse)"},
		{fmt.Errorf("write: %w", syscall.ECONNRESET), false, "bare close (no ErrorResponse)"},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true, "connect: connection refused"},
		{fmt.Errorf("query: %w", context.DeadlineExceeded), false, "timeout (no answer)"},
		{errors.New("something 42 odd"), false, "other: something N odd"},
	}
	for _, c := range cases {
		if got := classify(c.err, c.connect); got != c.want {
			t.Errorf("classify(%v, %v) = %q, want %q", c.err, c.connect, got, c.want)
		}
	}
}

func TestFoldCutsLongMessages(t *testing.T) {
	got := fold(strings.Repeat("x", 300))
	if len([]rune(got)) != 121 || !strings.HasSuffix(got, "…") {
		t.Errorf("fold of 300 characters = %d runes %q", len([]rune(got)), got)
	}
}

// sample is a run with all three faults: the replica stop at 8 s, the
// kill at 16 s, the promotion at 18 s.
func sample() *result {
	r := &result{
		variant: "asynchronous replication", commit: "abc1234", duration: s(40),
		events: []event{
			{name: "shard-0 replica stopped", cmd: "pg_ctl stop -m immediate", at: s(8), done: s(8.1)},
			{name: "shard-1 primary stop", at: s(16), done: s(16.2)},
			{name: "shard-1 replica promotion", at: s(18.2), done: s(18.4)},
		},
		killEvent: 1, promoteEvent: 2,
		acked: [2]int{100, 90}, lost: [2]int{0, 3},
	}
	r.ops = []op{
		{start: s(1), end: s(1.1), read: true},                                             // before
		{start: s(1), end: s(1.2), shard: 1},                                               // before
		{start: s(8.05), end: s(8.09), read: true, class: "bare close (no ErrorResponse)"}, // replica stop
		{start: s(15.9), end: s(16.1), shard: 1, class: "ErrorResponse FATAL 57P01: terminating", worker: 3},
		{start: s(16.1), end: s(18.6), shard: 1, worker: 4},                                                    // waited, acknowledged after the promotion
		{start: s(15.95), end: s(16.05), shard: 0, worker: 4},                                                  // shard-0 write in flight: not counted
		{start: s(17), end: s(17.1), connect: true, class: "connect: ErrorResponse FATAL 08006: x", worker: 3}, // a connect failure
		{start: s(20), end: s(20.1), read: true},
	}
	return r
}

func TestWindowsCountStatementsWhereTheyEnded(t *testing.T) {
	ws := sample().windows()
	if len(ws) != 4 {
		t.Fatalf("%d windows, want 4", len(ws))
	}
	want := []struct{ reads, readErrs, writes, writeErrs int }{
		{1, 0, 1, 0}, {0, 1, 0, 0}, {0, 0, 1, 2}, {1, 0, 1, 0},
	}
	for i, w := range ws {
		got := struct{ reads, readErrs, writes, writeErrs int }{w.reads, w.readErrs, w.writes, w.writeErrs}
		if got != want[i] {
			t.Errorf("window %d (%s): %+v, want %+v", i, w.name, got, want[i])
		}
	}
	if ws[2].writeClass["ErrorResponse FATAL 57P01: terminating"] != 1 || ws[1].readClass["bare close (no ErrorResponse)"] != 1 {
		t.Errorf("classes: %v %v", ws[1].readClass, ws[2].writeClass)
	}
	if ws[0].from != 0 || ws[0].to != s(8) || ws[3].to != s(40) {
		t.Errorf("bounds %s–%s … %s", ws[0].from, ws[0].to, ws[3].to)
	}
}

func TestInFlightCountsOnlyTheKilledShardsWritesAcrossTheKill(t *testing.T) {
	r := sample()
	// The failed one (15.9–16.1) and the waiting one started at 16.1,
	// before pg_ctl returned at 16.2; not the shard-0 write nor the
	// connect failure.
	if n := r.inFlightAt(r.events[1], 1); n != 2 {
		t.Errorf("in flight = %d, want 2", n)
	}
	// A write acknowledged before pg_ctl returned was not touched; a
	// writer failing twice during the stop counts once.
	r.ops = append(r.ops,
		op{start: s(16.0), end: s(16.05), shard: 1, worker: 5},
		op{start: s(16.1), end: s(16.15), shard: 1, class: "bare close (no ErrorResponse)", worker: 3})
	if n := r.inFlightAt(r.events[1], 1); n != 2 {
		t.Errorf("in flight = %d after an unaffected write and a second failure, want 2", n)
	}
}

func TestTargetsJudgeEachFault(t *testing.T) {
	r := sample()
	ts := r.targets()
	got := map[string]target{}
	for _, x := range ts {
		got[x.name] = x
	}
	check := func(name, measured string, met, judged bool) {
		t.Helper()
		x, ok := got[name]
		if !ok {
			t.Fatalf("no target %q in %+v", name, ts)
		}
		if x.got != measured || x.met != met || x.judged != judged {
			t.Errorf("%s: %+v, want got=%q met=%v judged=%v", name, x, measured, met, judged)
		}
	}
	check("replica death: 0 read errors, 0 write errors", "1 read, 0 write errors", false, true)
	check("primary death: 0 read errors", "0", true, true)
	check("primary death: write errors ≤ writes in flight at the kill", "2 errors, 2 in flight", true, true)
	check("writes resume ≤ 1 s after the promotion", "400 ms", true, true)
	check("acknowledged writes lost (asynchronous: no target)", "3 of 190", false, false)

	r.sync, r.lost = true, [2]int{}
	r.events, r.killEvent, r.promoteEvent = r.events[1:], 0, 1
	r.skipped = []string{"replica stop"}
	got = map[string]target{}
	for _, x := range r.targets() {
		got[x.name] = x
	}
	check("synchronous replication: 0 acknowledged writes lost", "0 of 190", true, true)
	check("replica death: 0 read errors, 0 write errors", "not measured (replica not stopped)", false, false)
}

func TestMarkdownHasTheTablesAndVerdicts(t *testing.T) {
	md := sample().markdown()
	for _, want := range []string{
		"### Chaos run, asynchronous replication",
		"Commit abc1234",
		"- 8.0 s: shard-0 replica stopped (`pg_ctl stop -m immediate`, returned after 100 ms)",
		"| window | reads ok | read errors | writes ok | write errors |",
		"| after shard-1 primary stop (16.0 s–18.2 s) | 0 | 0 | 1 | 2 |",
		"| after shard-0 replica stopped | read | 1 | bare close (no ErrorResponse) |",
		"in flight at the kill (running while `pg_ctl stop` ran, not acknowledged before it returned): 2. First write on shard-1 acknowledged 400 ms after the promotion was started (200 ms after it completed, 2600 ms after the kill).",
		"shard-0 0 of 100, shard-1 3 of 90",
		"| replica death: 0 read errors, 0 write errors | 1 read, 0 write errors | not met |",
		"| writes resume ≤ 1 s after the promotion | 400 ms | met |",
		"| acknowledged writes lost (asynchronous: no target) | 3 of 190 | — |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestMarkdownEscapesPipesInFailureMessages(t *testing.T) {
	r := sample()
	r.ops = append(r.ops, op{start: s(30), end: s(30.1), read: true, class: "other: a|b"})
	if md := r.markdown(); !strings.Contains(md, `other: a\|b`) {
		t.Errorf("pipe not escaped:\n%s", md)
	}
}
