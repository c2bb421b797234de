package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// perfStatOutput is perf 6.1's `perf stat -x, -o FILE` output for the
// events of sysEvents.
const perfStatOutput = `# started on Sun Dec  6 23:44:53 2026

30012,,syscalls:sys_enter_read,5004312345,100.00,,
60020,,syscalls:sys_enter_recvfrom,5004312345,100.00,,
20008,,syscalls:sys_enter_write,5004312345,100.00,,
40000,,syscalls:sys_enter_sendto,5004312345,100.00,,
21000,,syscalls:sys_enter_epoll_wait,5004312345,100.00,,
0,,syscalls:sys_enter_epoll_pwait,5004312345,100.00,,
`

func TestPerfStatOutputSumsReadsWritesAndWaits(t *testing.T) {
	c, err := parsePerfStat([]byte(perfStatOutput))
	if err != nil {
		t.Fatal(err)
	}
	if want := (sysCounts{90032, 60008, 21000}); c != want {
		t.Fatalf("parsePerfStat = %v, want %v", c, want)
	}
	reads, writes, waits := c.perTx(20000)
	if reads != 4.5016 || writes != 3.0004 || waits != 1.05 {
		t.Errorf("per transaction: %v + %v + %v, want 4.5016 + 3.0004 + 1.05", reads, writes, waits)
	}
	// Another event in the output is no business of the table.
	if c, err := parsePerfStat([]byte(perfStatOutput + "12,,syscalls:sys_enter_futex,5004312345,100.00,,\n")); err != nil || c != (sysCounts{90032, 60008, 21000}) {
		t.Errorf("with a futex line: %v, %v", c, err)
	}
}

func TestAnEventPerfDidNotCountIsNoMeasurement(t *testing.T) {
	for name, out := range map[string]string{
		"not counted":   strings.Replace(perfStatOutput, "20008,,syscalls:sys_enter_write,5004312345", "<not counted>,,syscalls:sys_enter_write,0", 1),
		"not supported": strings.Replace(perfStatOutput, "0,,syscalls:sys_enter_epoll_pwait,5004312345", "<not supported>,,syscalls:sys_enter_epoll_pwait,0", 1),
		"missing":       strings.Replace(perfStatOutput, "40000,,syscalls:sys_enter_sendto,5004312345,100.00,,\n", "", 1),
		"empty":         "# started on Sun Dec  6 23:44:53 2026\n\n",
		"malformed":     perfStatOutput + "garbage\n",
	} {
		if c, err := parsePerfStat([]byte(out)); err == nil {
			t.Errorf("%s: parsed as %v", name, c)
		}
	}
}

func TestReportShowsThePoolersSystemCallsPerTransaction(t *testing.T) {
	withSys := func(tps, reads, writes, waits float64) result {
		r := ok(tps)
		r.sysCounted, r.sysReads, r.sysWrites, r.sysWaits = true, reads, writes, waits
		return r
	}
	tbl := &table{mode: modeTransaction, poolSize: 10, targets: []string{"pgbouncer", "sidecar"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "extended", clients: 10, res: []result{withSys(8000, 3, 2, 0.704), withSys(7000, 3.5, 2, 1.045)}, unsupported: []bool{false, false}},
		{proto: "connect", clients: 4, res: []result{ok(3000), withSys(3100, 12, 9.5, 4)}, unsupported: []bool{false, false}},
	}}
	md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown()
	reportHas(t, md,
		"System calls per transaction, reads (read, recvfrom) + writes (write, sendto) + epoll waits",
		"| extended | 10 | 3.00 + 2.00 + 0.70 | 3.50 + 2.00 + 1.04 |",
		"| connect | 4 | – | 12.00 + 9.50 + 4.00 |",
	)
	// Under the context switches, above the CPU split.
	if i, j := strings.Index(md, "Context switches"), strings.Index(md, "System calls per"); i >= 0 && j < i {
		t.Errorf("system calls before context switches:\n%s", md)
	}
	tbl.rows = tbl.rows[1:]
	tbl.rows[0].res[1] = ok(3100)
	if md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(); strings.Contains(md, "System calls per") {
		t.Errorf("a table without counted system calls has a system-call table:\n%s", md)
	}

	got := combineRuns([]result{withSys(1, 3, 2, 1), ok(1), withSys(1, 5, 4, 0.5), withSys(1, 4, 3, 2)})
	if !got.sysCounted || got.sysReads != 4 || got.sysWrites != 3 || got.sysWaits != 1 {
		t.Errorf("combined system calls = %v %v + %v + %v, want the medians of the counted runs, 4 + 3 + 1", got.sysCounted, got.sysReads, got.sysWrites, got.sysWaits)
	}
	if got := combineRuns([]result{ok(1), ok(1)}); got.sysCounted {
		t.Errorf("runs without counts combined into %+v", got)
	}
}

// fakePerf puts an executable named perf, a shell script of body, first
// on PATH.
func fakePerf(t *testing.T, body string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "perf"), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func TestSystemCallsAreCountedFromEnableToInterrupt(t *testing.T) {
	// Like perf stat --delay -1 --control fd:3,4 -o FILE: acknowledge
	// "enable" on fd 4, write the counts to FILE when interrupted.
	fakePerf(t, `out=
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
read cmd <&3
[ "$cmd" = enable ] || exit 3
trap 'cat >"$out" <<EOF
`+perfStatOutput+`EOF
exit 130' INT
echo ack >&4
while :; do sleep 0.01; done
`)
	var log strings.Builder
	b := &bench{dir: t.TempDir(), log: &log}
	p := b.startSyscallCount(os.Getpid(), "extended-c10-sidecar")
	if p == nil {
		t.Fatalf("not counting: %s", log.String())
	}
	c, ok := b.stopSyscallCount(p)
	if !ok || c != (sysCounts{90032, 60008, 21000}) {
		t.Fatalf("stopSyscallCount = %v, %v; log: %s", c, ok, log.String())
	}
	if _, err := os.Stat(filepath.Join(b.dir, "perf", "extended-c10-sidecar.csv")); err != nil {
		t.Errorf("perf's output is not kept: %v", err)
	}
	if p := b.startSyscallCount(0, "extended-c10-direct"); p != nil {
		t.Error("counting the system calls of no process")
	}
	if log.Len() > 0 {
		t.Errorf("logged: %s", log.String())
	}
}

func TestPerfFailingIsLoggedOnceAndTheRunGoesOn(t *testing.T) {
	fakePerf(t, `echo 'event syntax error: '"'"'syscalls:sys_enter_read'"'"'' >&2
echo 'Run '"'"'perf list'"'"' for a list of valid events' >&2
exit 129
`)
	var log strings.Builder
	b := &bench{dir: t.TempDir(), log: &log}
	for range 3 {
		if p := b.startSyscallCount(os.Getpid(), "simple-c1-pgbouncer"); p != nil {
			t.Fatal("counting with a perf that fails")
		}
	}
	if got := log.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "bench: system calls per transaction not counted") || !strings.Contains(got, "perf list") {
		t.Errorf("log = %q, want one line with perf's last words", got)
	}
	if _, ok := b.stopSyscallCount(nil); ok {
		t.Error("a count without perf")
	}
}

func TestPerfNotInstalledIsLoggedOnce(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	var log strings.Builder
	b := &bench{dir: t.TempDir(), log: &log}
	for range 2 {
		if p := b.startSyscallCount(os.Getpid(), "simple-c1-sidecar"); p != nil {
			t.Fatal("counting without perf")
		}
	}
	if got := log.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "perf not found") {
		t.Errorf("log = %q", got)
	}
}
