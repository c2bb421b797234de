package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/pprof/profile"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == refRelayCmd {
		os.Exit(runRefRelay(os.Args[2:], os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // setup failed, interrupted, or a measurement had errors
	exitUsage = 2
)

// options are the command-line settings.
type options struct {
	dir        string
	sidecarBin string
	duration   time.Duration
	clients    []int
	protocols  []string
	skipRSS    bool
	rssClients int
	scale      int
	repeat     int      // runs per (row, target); cells show the median
	modes      []string // tables to run, in allModes order
	// sidecarEnv is extra environment for every sidecar run (e.g.
	// GOMAXPROCS=1), recorded in the report.
	sidecarEnv map[string]string
	// sidecarB is a second sidecar binary run as one more target
	// (colSidecarB) in the session and transaction tables: two builds
	// compared in one run, interleaved like every target.
	sidecarB string
	// rate, when > 0, limits every pgbench run of the session and
	// transaction tables to rate transactions per second (pgbench -R).
	rate int
	// reference adds a second PgBouncer to both tables, the reference
	// relays (refKinds) to the session table and go-txloop to the
	// transaction table.
	reference bool
	// shardedClients is the client count of the sharded table's rows (its
	// fan-out read also runs with one client).
	shardedClients int
	// fanoutIncidents is how many incidents the sharded table's fan-out
	// read orders.
	fanoutIncidents int
	// txnRows are the transaction table's rows to run, in txnRows order
	// (default all).
	txnRows []rowSpec
	// cpuProfile, if set, is where the merged CPU profile of the session
	// and transaction tables' sidecars is written (cpuprofile.go).
	cpuProfile string
}

var allProtocols = []string{"simple", "extended", "prepared"}

// Tables: the pool modes, one table each, and the sharded table (one
// database, the sidecar on one shard and on two shards; sharded.go).
const (
	modeSession     = "session"
	modeTransaction = "transaction"
	modeSharded     = "sharded"
)

var allModes = []string{modeSession, modeTransaction, modeSharded}

// usesPgbench reports whether a table of modes runs pgbench -S against
// PgBouncer (the session and transaction tables).
func usesPgbench(modes []string) bool {
	return slices.Contains(modes, modeSession) || slices.Contains(modes, modeTransaction)
}

// rowSpec is a (protocol, clients) row before it runs.
type rowSpec struct {
	proto   string
	clients int
}

// txnRows are the rows of the transaction table, fixed whatever
// -clients and -protocols say: the sidecar's extended and prepared rows at
// 50 clients are compared with each other, and the connect row measures
// new connections (pgbench -C, each with one query) at 4 clients.
var txnRows = []rowSpec{
	{"simple", 10}, {"simple", 50},
	{"extended", 10}, {"extended", 50},
	{"prepared", 50},
	{protoConnect, 4},
}

// selectTxnRows returns the transaction table's rows whose protocol is in
// the comma-separated list names, in txnRows order; every row when names
// is empty.
func selectTxnRows(names string) ([]rowSpec, error) {
	if strings.TrimSpace(names) == "" {
		return txnRows, nil
	}
	var want []string
	var errs []error
	for _, s := range strings.Split(names, ",") {
		s = strings.TrimSpace(s)
		if !slices.ContainsFunc(txnRows, func(r rowSpec) bool { return r.proto == s }) {
			errs = append(errs, fmt.Errorf("-txn-rows: %q is not one of %s, %s", s, strings.Join(allProtocols, ", "), protoConnect))
			continue
		}
		want = append(want, s)
	}
	var rows []rowSpec
	for _, r := range txnRows {
		if slices.Contains(want, r.proto) {
			rows = append(rows, r)
		}
	}
	return rows, errors.Join(errs...)
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dir, "dir", ".bench", "work directory; deleted and recreated on every run")
	fs.StringVar(&o.sidecarBin, "sidecar", "bin/brownie-sidecar", "sidecar binary built by `make build`")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each pgbench run (whole seconds)")
	clients := fs.String("clients", "1,10,50", "comma-separated pgbench client counts")
	protocols := fs.String("protocols", strings.Join(allProtocols, ","), "comma-separated pgbench query protocols")
	fs.BoolVar(&o.skipRSS, "skip-rss", false, "skip the idle-connection RSS and cost-per-pod memory measurements")
	fs.IntVar(&o.rssClients, "rss-clients", 2000, "idle client sessions opened for the RSS measurement")
	fs.Func("sidecar-env", "NAME=VALUE added to every sidecar's environment (repeatable), e.g. GOMAXPROCS=1", func(v string) error {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return fmt.Errorf("want NAME=VALUE, got %q", v)
		}
		if o.sidecarEnv == nil {
			o.sidecarEnv = map[string]string{}
		}
		o.sidecarEnv[k] = val
		return nil
	})
	fs.BoolVar(&o.reference, "reference", false, "also run each table against a second, identical PgBouncer (the noise of a ratio) and the session table against two minimal Go relays (go-pipe, go-loop: see refrelay.go) and the transaction table against a minimal Go transaction pooler (go-txloop: txloop.go), the ceiling of a Go proxy on this machine")
	fs.IntVar(&o.scale, "scale", 10, "pgbench -i scale factor")
	fs.IntVar(&o.repeat, "repeat", 1, "runs per row and target (targets interleaved); cells show the median")
	modes := fs.String("modes", strings.Join(allModes, ","), "comma-separated tables to run (empty: only the memory measurements): session (pool 60, -clients x -protocols), transaction (pool 10, fixed rows), sharded (one database, the sidecar on one and on two shards: fan-out read, single-team and signup transactions)")
	fs.IntVar(&o.shardedClients, "sharded-clients", 10, "clients of the sharded table's rows (the fan-out read also runs with 1)")
	fs.IntVar(&o.fanoutIncidents, "fanout-incidents", 100000, "incidents the sharded table's fan-out read orders (spread over the two shards)")
	fs.StringVar(&o.sidecarB, "sidecar-b", "", "a second sidecar binary, run as the target sidecar-b in the session and transaction tables beside -sidecar: an A/B comparison of two builds in one run")
	fs.IntVar(&o.rate, "rate", 0, "pgbench -R: run the session and transaction tables' rows at this many transactions per second (over all clients) instead of as fast as possible, so each pooler's CPU per transaction is measured for the same work on a machine with CPU to spare (0: unlimited)")
	fs.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the sidecars of the session and transaction tables, merged over every pgbench run against them, to this file (for go tool pprof, or go build -pgo)")
	txnRowNames := fs.String("txn-rows", "", "comma-separated protocols of the transaction table's rows to run (simple, extended, prepared, connect); empty: every row")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var errs []error
	var err error
	if o.rate < 0 {
		errs = append(errs, fmt.Errorf("-rate %d must not be negative", o.rate))
	}
	if o.duration < time.Second || o.duration%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-duration %s must be a whole number of seconds, at least 1s (pgbench -T)", o.duration))
	}
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("-clients: %q is not a positive integer", s))
			continue
		}
		o.clients = append(o.clients, n)
	}
	for _, s := range strings.Split(*protocols, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(allProtocols, s) {
			errs = append(errs, fmt.Errorf("-protocols: %q is not one of %s", s, strings.Join(allProtocols, ", ")))
			continue
		}
		o.protocols = append(o.protocols, s)
	}
	for _, s := range strings.Split(*modes, ",") {
		s = strings.TrimSpace(s)
		if *modes != "" && !slices.Contains(allModes, s) {
			errs = append(errs, fmt.Errorf("-modes: %q is not one of %s", s, strings.Join(allModes, ", ")))
		}
	}
	for _, m := range allModes { // allModes order, each once
		if slices.ContainsFunc(strings.Split(*modes, ","), func(s string) bool { return strings.TrimSpace(s) == m }) {
			o.modes = append(o.modes, m)
		}
	}
	if o.txnRows, err = selectTxnRows(*txnRowNames); err != nil {
		errs = append(errs, err)
	}
	if slices.Max(append([]int{0}, o.clients...)) > maxBenchClients {
		errs = append(errs, fmt.Errorf("-clients: at most %d (pool sizes and max_connections are sized for it)", maxBenchClients))
	}
	if o.rssClients < 1 {
		errs = append(errs, errors.New("-rss-clients must be at least 1"))
	}
	if o.scale < 1 {
		errs = append(errs, errors.New("-scale must be at least 1"))
	}
	if o.repeat < 1 {
		errs = append(errs, errors.New("-repeat must be at least 1"))
	}
	if o.shardedClients < 1 || o.shardedClients > maxBenchClients {
		errs = append(errs, fmt.Errorf("-sharded-clients must be between 1 and %d", maxBenchClients))
	}
	if o.fanoutIncidents < fanoutLimit {
		errs = append(errs, fmt.Errorf("-fanout-incidents must be at least %d (the fan-out read's LIMIT)", fanoutLimit))
	}
	return o, errors.Join(errs...)
}

// run runs the whole benchmark and returns the exit code. Every process it
// starts is stopped before it returns.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return exitUsage
	}
	b, err := newBench(opts, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return exitFail
	}
	defer b.cleanup()

	rep, err := b.run(ctx)
	// An interrupted run leaves an earlier profile in place.
	if opts.cpuProfile != "" && ctx.Err() == nil {
		if perr := b.writeCPUProfile(opts.cpuProfile); perr != nil {
			err = errors.Join(err, fmt.Errorf("-cpu-profile %s: %w", opts.cpuProfile, perr))
		} else {
			fmt.Fprintf(stderr, "bench: CPU profile of %d sidecar runs written to %s\n", len(b.profiles), opts.cpuProfile)
		}
	}
	if rep != nil && (rep.hasRows() || rep.rss != nil) {
		out := rep.markdown()
		fmt.Fprint(stdout, "\n"+out)
		path := filepath.Join(b.dir, "results.md")
		if werr := os.WriteFile(path, []byte(out), 0o644); werr != nil {
			fmt.Fprintln(stderr, "bench:", werr)
		} else {
			fmt.Fprintln(stderr, "bench: results written to", path)
		}
	}
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "bench: interrupted; stopping everything")
		return exitFail
	case err != nil:
		fmt.Fprintln(stderr, "bench:", err)
		return exitFail
	case rep.hasErrors():
		fmt.Fprintln(stderr, "bench: some runs reported errors; see the report")
		return exitFail
	}
	return exitOK
}

// bench holds the state of one run. It is used from one goroutine.
type bench struct {
	opts    options
	log     io.Writer // progress, to stderr
	dir     string    // absolute work directory
	certDir string
	binDir  string // PostgreSQL binaries
	pgbench string
	bouncer string // pgbouncer executable
	sidecar string // absolute sidecar binary
	// sidecarB is the absolute -sidecar-b binary, or "".
	sidecarB string
	cmdLog   *os.File

	pg      *pgcluster.Cluster
	cleanFn []func()

	// profiles are the sidecar CPU profiles fetched so far (-cpu-profile).
	profiles []*profile.Profile
	// perfOff is set once perf failed to count a pooler's system calls
	// (syscalls.go); none are counted after that.
	perfOff bool
}

// newBench checks that every tool is installed before anything starts, so a
// missing piece fails in a second with the command that installs it.
func newBench(opts options, log io.Writer) (*bench, error) {
	b := &bench{opts: opts, log: log}
	var err error
	if b.dir, err = filepath.Abs(opts.dir); err != nil {
		return nil, err
	}
	var errs []error
	pgbench := usesPgbench(opts.modes)
	if b.sidecar, err = filepath.Abs(opts.sidecarBin); err != nil {
		errs = append(errs, err)
	} else if fi, err := os.Stat(b.sidecar); err != nil || fi.IsDir() {
		errs = append(errs, fmt.Errorf("sidecar binary %s not found: run make build", opts.sidecarBin))
	}
	if opts.sidecarB != "" {
		if b.sidecarB, err = filepath.Abs(opts.sidecarB); err != nil {
			errs = append(errs, err)
		} else if !isFile(b.sidecarB) {
			errs = append(errs, fmt.Errorf("-sidecar-b binary %s not found", opts.sidecarB))
		}
	}
	if b.binDir, err = pgcluster.FindBinDir(); err != nil {
		errs = append(errs, err)
	} else if b.pgbench = filepath.Join(b.binDir, "pgbench"); !isFile(b.pgbench) {
		if b.pgbench, err = exec.LookPath("pgbench"); err != nil && pgbench {
			errs = append(errs, errors.New("pgbench not found; install PostgreSQL with `make deps`"))
		}
	}
	// Only the session and transaction tables run PgBouncer.
	if b.bouncer, err = exec.LookPath("pgbouncer"); err != nil && pgbench {
		if b.bouncer = "/usr/sbin/pgbouncer"; !isFile(b.bouncer) {
			errs = append(errs, errors.New("pgbouncer not found; install it with `apt-get install pgbouncer` (make deps-bench)"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return b, nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// onCleanup registers f to run, last registered first, when the run ends.
func (b *bench) onCleanup(f func()) { b.cleanFn = append(b.cleanFn, f) }

// cleanup stops everything started so far. It is idempotent.
func (b *bench) cleanup() {
	for i := len(b.cleanFn) - 1; i >= 0; i-- {
		b.cleanFn[i]()
	}
	b.cleanFn = nil
	if b.cmdLog != nil {
		b.cmdLog.Close()
		b.cmdLog = nil
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

// run performs every step and returns the report built so far, even on
// error, so that completed measurements are still printed.
func (b *bench) run(ctx context.Context) (*report, error) {
	if err := raiseFileLimit(8192); err != nil {
		return nil, err
	}
	if err := b.prepareDir(ctx); err != nil {
		return nil, err
	}
	if err := b.startPostgres(ctx, map[string]string{"max_connections": "300"}); err != nil {
		return nil, err
	}
	if usesPgbench(b.opts.modes) {
		if err := b.initPgbench(ctx); err != nil {
			return nil, err
		}
	} else if err := b.pg.EnsureBrownieDatabase(ctx); err != nil {
		return nil, err
	}
	rep := &report{
		started:  time.Now(),
		duration: b.opts.duration,
		scale:    b.opts.scale,
		cpus:     runtime.NumCPU(),
		repeat:   b.opts.repeat,
		versions: b.versions(ctx),
		skipRSS:  b.opts.skipRSS,

		sidecarEnv: b.opts.sidecarEnv,
		cpuProfile: b.opts.cpuProfile != "",
		rate:       b.opts.rate,
	}

	if slices.Contains(b.opts.modes, modeSession) {
		var rows []rowSpec
		for _, proto := range b.opts.protocols {
			for _, n := range b.opts.clients {
				rows = append(rows, rowSpec{proto, n})
			}
		}
		if err := b.runMode(ctx, rep, modeSession, benchPoolSize, rows); err != nil {
			return rep, err
		}
	}
	if slices.Contains(b.opts.modes, modeTransaction) {
		if err := b.runMode(ctx, rep, modeTransaction, txnPoolSize, b.opts.txnRows); err != nil {
			return rep, err
		}
	}
	if slices.Contains(b.opts.modes, modeSharded) {
		if err := b.runSharded(ctx, rep); err != nil {
			return rep, err
		}
	}

	if !b.opts.skipRSS {
		res, err := b.measureIdleRSS(ctx, b.opts.rssClients)
		rep.rss = res
		if err != nil {
			return rep, err
		}
		if rep.memory, err = b.measureMemory(ctx); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// runMode starts a PgBouncer and a sidecar in the given pool mode with
// poolSize upstream connections each, runs one table of rows against them
// (the session table also against PostgreSQL directly), adds it to rep and
// stops both poolers again, so each table has the machine to itself.
//
// In transaction mode PgBouncer 1.18 has no protocol-level prepared
// statements, so its -M prepared rows are expected to fail. They are run
// anyway and reported with the error pgbench printed.
func (b *bench) runMode(ctx context.Context, rep *report, mode string, poolSize int, rows []rowSpec) error {
	bouncerName, sidecarName, tag := "pgbouncer", "sidecar", ""
	if mode == modeTransaction {
		bouncerName, sidecarName, tag = "pgbouncer-txn", "sidecar-txn", "txn"
	}
	tbl := &table{mode: mode, poolSize: poolSize}
	rep.tables = append(rep.tables, tbl)

	bouncer, bouncerAddr, err := b.startPgBouncer(ctx, bouncerName, mode, poolSize)
	if err != nil {
		return err
	}
	defer bouncer.stop()
	side, err := b.startSidecar(ctx, sidecarName, sidecarTableEnv(mode, poolSize, b.opts.cpuProfile != ""))
	if err != nil {
		return err
	}
	defer func() {
		side.stop()
		tbl.sidecarLogs = append(tbl.sidecarLogs, namedLog{name: colSidecar, log: readSidecarLog(side.proc.logPath, 0, -1)})
	}()

	pgPid, err := postmasterPID(b.pg)
	if err != nil {
		return err
	}
	pgPids := []int{pgPid} // every target's server: its CPU per transaction is reported too
	var targets []target
	if mode == modeSession {
		targets = append(targets, target{name: "direct", host: "localhost", port: b.pg.Port(), tls: true})
	}
	targets = append(targets,
		target{name: "pgbouncer", host: "127.0.0.1", port: bouncerAddr.Port, noPrepared: mode == modeTransaction, pid: bouncer.proc.pid()},
		target{name: "sidecar", host: "127.0.0.1", port: side.addr.Port, pid: side.proc.pid()},
	)
	if b.opts.cpuProfile != "" {
		targets[len(targets)-1].pprofAddr = side.adminAddr.String()
	}
	if b.opts.reference {
		// A second, identical PgBouncer: its ratio to the first is what
		// the noise alone does to a ratio of two equal poolers.
		aa, aaAddr, err := b.startPgBouncer(ctx, bouncerName+"-aa", mode, poolSize)
		if err != nil {
			return err
		}
		defer aa.stop()
		targets = append(targets, target{name: colBouncerAA, host: "127.0.0.1", port: aaAddr.Port, noPrepared: mode == modeTransaction, pid: aa.proc.pid()})
	}
	if b.sidecarB != "" {
		sb, err := b.startSidecarBin(ctx, b.sidecarB, sidecarName+"-b", sidecarTableEnv(mode, poolSize, false))
		if err != nil {
			return err
		}
		defer func() {
			sb.stop()
			tbl.sidecarLogs = append(tbl.sidecarLogs, namedLog{name: colSidecarB, log: readSidecarLog(sb.proc.logPath, 0, -1)})
		}()
		targets = append(targets, target{name: colSidecarB, host: "127.0.0.1", port: sb.addr.Port, pid: sb.proc.pid()})
	}
	if b.opts.reference {
		kinds := refKinds
		if mode == modeTransaction {
			kinds = []string{refTxLoop}
		}
		for _, kind := range kinds {
			p, addr, err := b.startRefRelay(ctx, kind, poolSize)
			if err != nil {
				return err
			}
			defer p.stop(syscall.SIGTERM, 5*time.Second)
			targets = append(targets, target{name: kind, host: "127.0.0.1", port: addr.Port, pid: p.pid(), noPrepared: mode == modeTransaction})
		}
	}
	for i := range targets {
		targets[i].pgPids = pgPids
		tbl.targets = append(tbl.targets, targets[i].name)
	}
	b.logf("%s table: pool %d, %d rows x %d targets x %d runs of %s", mode, poolSize, len(rows), len(targets), b.opts.repeat, b.opts.duration)
	tbl.loadBefore = loadAverage()
	err = b.runTable(ctx, tbl, targets, rows, tag, b.runPgbench, "simple")
	tbl.loadAfter = loadAverage()
	return err
}

// roundOrder is the order of n targets in a round: it starts with target
// shift (mod n) and goes up from there when shift is even, down when it is
// odd (0 1 2 3, 1 0 3 2, 2 3 0 1, 3 2 1 0 for four targets). The first
// target rotates; with an even n every target takes every place in n
// rounds; and a target follows a different one in consecutive rounds (its
// predecessor in the forward rounds, its successor in the others), so
// what a run leaves behind (backends exiting, a pooler's clean-up) does
// not fall on the same target in every round.
func roundOrder(n, shift int) []int {
	order := make([]int, n)
	for k := range order {
		if shift%2 == 0 {
			order[k] = (shift + k) % n
		} else {
			order[k] = ((shift-k)%n + n) % n
		}
	}
	return order
}

// warmupDuration is the length of the unrecorded warm-up run per target.
const warmupDuration = 5 * time.Second

// runFunc runs one measurement: proto (a pgbench protocol, or a workload of
// the sharded table) with clients against t for dur. tag, if set, prefixes
// its log file.
type runFunc func(ctx context.Context, t target, proto string, clients int, dur time.Duration, tag string) result

// runTable runs the warm-up and then every row into tbl with run. Within a
// row the targets run back to back, and with -repeat N the row is N such
// rounds; each round (and each row) starts one target further along, in
// alternate directions (A B C D, B A D C, C D A B, ...: roundOrder),
// because a target's place in the round biases it (a PgBouncer run later
// in the round measured 10 % below an identical one run earlier), and so
// can the target run just before it, so drift, place and predecessor fall
// on the targets alike. Each cell is the median of its N runs. tag, if
// set, prefixes the log files.
//
// The warm-up runs warmProto with the largest client count against each
// target once, so both poolers hold as many upstream connections as any
// row needs and the table's data pages are cached before the first
// recorded run. PostgreSQL on a small machine starts a TLS backend in tens
// of milliseconds, which would otherwise eat into the first short run
// through each pooler.
func (b *bench) runTable(ctx context.Context, tbl *table, targets []target, rows []rowSpec, tag string, run runFunc, warmProto string) error {
	warmClients := 0
	for _, spec := range rows {
		warmClients = max(warmClients, spec.clients)
	}
	for _, t := range targets {
		b.logf("warm-up: %s, %s, %d clients, %s", t.name, warmProto, warmClients, warmupDuration)
		r := run(ctx, t, warmProto, warmClients, warmupDuration, joinTag(tag, "warmup"))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.exitErr != nil || len(r.stderr) > 0 || r.failedTx > 0 {
			b.logf("  warm-up against %s FAILED: %s", t.name, r.summary())
			tbl.warmupErrors = append(tbl.warmupErrors, runError{target: t.name, proto: warmProto, clients: warmClients, res: r})
		}
	}
	for n, spec := range rows {
		runs := make([][]result, len(targets))
		for i := range b.opts.repeat {
			runTag := tag
			if b.opts.repeat > 1 {
				runTag = joinTag(tag, fmt.Sprintf("r%d", i+1))
			}
			for _, j := range roundOrder(len(targets), i+n) {
				t := targets[j]
				r := run(ctx, t, spec.proto, spec.clients, b.opts.duration, runTag)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				runs[j] = append(runs[j], r)
				switch {
				case r.failed() && t.noPrepared && spec.proto == "prepared":
					b.logf("  %-9s %-8s c=%-3d FAILED (expected, no prepared statements in transaction mode): %s", t.name, spec.proto, spec.clients, r.summary())
				case r.failed():
					b.logf("  %-9s %-8s c=%-3d FAILED: %s", t.name, spec.proto, spec.clients, r.summary())
				default:
					b.logf("  %-9s %-8s c=%-3d %10.0f tps %8.3f ms%s", t.name, spec.proto, spec.clients, r.tps, r.latencyMs, percentiles(r))
				}
			}
		}
		row := row{proto: spec.proto, clients: spec.clients}
		for j, t := range targets {
			m := combineRuns(runs[j])
			row.res = append(row.res, m)
			row.unsupported = append(row.unsupported, t.noPrepared && spec.proto == "prepared")
			switch {
			case b.opts.repeat == 1:
			case m.failed():
				b.logf("  %-9s %-8s c=%-3d %d of %d runs FAILED", t.name, spec.proto, spec.clients, m.failedRuns, m.runs)
			default:
				b.logf("  %-9s %-8s c=%-3d median of %d: %10.0f tps %8.3f ms%s", t.name, spec.proto, spec.clients, m.runs, m.tps, m.latencyMs, percentiles(m))
			}
		}
		tbl.rows = append(tbl.rows, row)
	}
	return nil
}

// percentiles is " (p50 x, p95 y)" for a result that measured them, else "".
func percentiles(r result) string {
	if r.p95Ms <= 0 {
		return ""
	}
	return fmt.Sprintf(" (p50 %.3f, p95 %.3f)", r.p50Ms, r.p95Ms)
}

// joinTag joins non-empty log-file name prefixes with "-".
func joinTag(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, "-")
}

// loadAverage returns the 1-minute load average, or -1 if unknown. Other
// work on the machine skews every number, so the report shows it.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// raiseFileLimit sets RLIMIT_NOFILE to at least want (raising the hard limit
// too when allowed). Calling Setrlimit explicitly also makes child processes
// (the sidecar, PgBouncer, PostgreSQL) inherit the raised limit instead of
// the one the Go runtime saved at startup.
func raiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur < want {
		lim.Cur = want
	}
	if lim.Max < lim.Cur {
		lim.Max = lim.Cur // works as root; otherwise fall back below
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		var cur syscall.Rlimit
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur)
		cur.Cur = cur.Max
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &cur); err2 != nil {
			return fmt.Errorf("setrlimit RLIMIT_NOFILE: %w", err)
		}
	}
	return nil
}
