// Command bench is the program behind `make bench`: it measures the sidecar
// against PostgreSQL reached directly over TLS with the client certificate
// and against PgBouncer (from apt, in session and in transaction mode)
// holding the same client certificate upstream, all in the same run on the
// same machine.
//
// It prints one markdown table per pool mode, and the sharded table
// (-modes):
//
//   - session (pool 60): for every protocol (simple, extended, prepared)
//     and client count (1, 10, 50) it runs `pgbench -S` against the three
//     targets back to back; TPS, mean latency, each pooler's CPU per
//     transaction and the sidecar/PgBouncer and sidecar/direct ratios,
//     judged against the cost-per-pod targets "sidecar TPS ≥ 0.95×
//     PgBouncer's in every row" and "sidecar CPU per transaction ≤ 1.15×
//     PgBouncer's". Under the table, each pooler's context switches per
//     transaction, voluntary and involuntary, over all its threads, its
//     system calls per transaction (reads, writes and epoll waits over all
//     its threads, counted by `perf stat` on the syscall tracepoints:
//     syscalls.go; without a working perf the bench logs why and leaves
//     that table out), its CPU per transaction split into user and system
//     time, and the whole machine's CPU per transaction (pooler,
//     PostgreSQL, pgbench) with the share of the machine's CPU time they
//     used: TPS is that share times the CPUs over their sum.
//   - transaction (pool 10, fixed rows): a second PgBouncer (pool_mode =
//     transaction) and a second sidecar (POOL_MODE=transaction), started
//     after the session pair is stopped, run the fixed rows simple and
//     extended at 10 and 50 clients, prepared at 50, and connect at 4
//     (`pgbench -C -M simple`: a new connection, its startup and one query
//     per transaction). PgBouncer 1.18 has
//     no protocol-level prepared statements in transaction mode: its
//     prepared row runs anyway and is shown as failed with the error pgbench
//     printed, which does not fail the benchmark (any other failure does).
//     Judged against "sidecar TPS ≥ 0.95× PgBouncer's in every row both
//     can run, new connections ≥ 1.0×", "sidecar CPU per transaction ≤
//     1.15× PgBouncer's" and "sidecar prepared TPS ≥ its own extended TPS".
//   - sharded (sharded.go, workload.go): the sidecar over shards. The one
//     database is restarted with the settings of two more clusters made
//     for this table (shard-0, shard-1: each the primary of one shard,
//     with the Brownie schema); the shard maps (deploy/shardmap/brownie.yaml
//     with one shard, the one database, and with the two shards) are
//     written to the work directory. The same rows are loaded straight
//     into the one database and, by the sidecar's own placement
//     (router.Place), into the shards: 100,000 incidents of one
//     organization (-fanout-incidents) and, per target, 100 teams with 20
//     incidents and a user. Three targets — the one database directly
//     (TLS with the client certificate), a sidecar with the one-shard map
//     and a sidecar on the two shards, both in transaction mode, pool 10
//     per shard — run three workloads with this program's pgx clients
//     (extended protocol, unnamed statements, client-made uuids, every
//     answer checked): the keyless fan-out read `ORDER BY created_at DESC
//     LIMIT 50` (1 and -sharded-clients clients), a single-team request
//     transaction and a signup transaction (organization, team and user:
//     two-phase commit on two shards). TPS, mean/p50/p95 latency and the
//     sidecars' CPU per transaction, judged against "single-team on two
//     shards ≥ 0.90 × one shard", "signup on two shards ≥ 0.50 × the one
//     database" and "fan-out latency on two shards ≤ 1.30 × the one
//     database". A wrong answer (a fan-out read that does not return
//     exactly the newest 50 incidents in order) fails the run.
//
// With -repeat N every row is N rounds of its targets, each round starting
// one target further along and going through them in the other direction
// than the round before (A B C, B A C, C A B, ...: roundOrder), and
// each cell shows the median TPS and median latency of its N runs, with the
// spread of the runs' TPS. Last, it restarts PostgreSQL with room for 2,000
// backends, starts a fresh sidecar, opens 2,000 idle client sessions (each
// a completed startup and nothing else: like PgBouncer, the sidecar takes an
// upstream connection at a session's first statement, so idle sessions hold
// none) and reports the sidecar's peak resident set (VmHWM). Then the cost
// per pod in memory (memory.go): the sidecar (backups configured) and
// PgBouncer alone, transaction mode, pool 10, each started from an
// executable dropped from the page cache (posix_fadvise DONTNEED), so its
// file pages come in as a pod's do from its image: RSS at start, with 1,000
// idle clients right after their startup, with the same clients after
// each ran `SELECT 1`, and with 10,000 such clients. Each reading waits
// until every sidecar session is dormant (its gauge) and the RSS is
// stable. With -reference the second PgBouncer is measured as well; with
// -repeat N every pooler is measured N times, started afresh and taking
// turns, and each reading is the median of its rounds.
//
// It owns the work directory (.bench by default, recreated on every run) and
// every process it starts there: one PostgreSQL cluster through
// internal/pgcluster (and the sharded table's two shards), PgBouncer and
// the sidecar binary (bin/brownie-sidecar, built by `make build`) as child
// processes, one pair per table, and pgbench runs. All of them
// are stopped when the program returns, fails or is interrupted. It never
// touches the sidecar's source or configuration beyond the environment of
// the process it starts.
//
// With -reference (on in `make bench`) each table also runs against a
// second PgBouncer configured like the first, whose ratio to it shows what
// the machine's noise alone does to the ratio of two equal poolers, and the
// session table against two reference relays started from this program
// (refrelay.go): go-pipe and go-loop carry pgbench to PostgreSQL with the
// client certificate and copy bytes without reading them, the first with
// two goroutines per client like the sidecar, the second with one epoll
// event loop like PgBouncer. The transaction table runs against a third,
// go-txloop (txloop.go): go-loop's event loop pooling as many upstream
// connections as the poolers, a connection per transaction, reading only
// the message framing. They run on as many scheduler threads as the
// sidecar (its GOMAXPROCS from -sidecar-env), else on the one thread the
// sidecar starts with.
// They measure what a Go proxy reaches on this machine at best, so the
// sidecar's ratio to PgBouncer can be read against the ceiling of the
// language and design, in the same run.
//
// With -cpu-profile PATH (cpuprofile.go) the sidecars of the session and
// transaction tables run with ADMIN_PPROF=true, and during every pgbench
// run against one of them (warm-up and connect rows included) the program
// fetches /debug/pprof/profile from its admin port for the run's length
// less one second. At the end it merges the profiles into one pprof file
// at PATH, replacing it only then; a failed fetch is logged and skipped,
// and an interrupted run leaves PATH as it was. The report notes that the
// sidecars' figures include the profiler's cost.
//
// Usage:
//
//	go run ./internal/bench [-duration 10s] [-repeat 1]
//	    [-modes session,transaction,sharded] [-clients 1,10,50]
//	    [-protocols simple,extended,prepared] [-txn-rows ...] [-skip-rss]
//	    [-rss-clients 2000] [-reference] [-sidecar-env NAME=VALUE]
//	    [-sharded-clients 10] [-fanout-incidents 100000]
//	    [-cpu-profile PATH] [-sidecar-b PATH] [-rate 0]
//
// -sidecar-b PATH runs a second sidecar build as one more target
// (sidecar-b) of the session and transaction tables, interleaved with the
// others in every round, so two builds are compared in one run under the
// same load (its columns and its ratio to PgBouncer sit beside the
// sidecar's).
//
// -rate N runs every pgbench of the session and transaction tables at N
// transactions per second over all its clients (pgbench -R) instead of as
// fast as it can. Every target then does the same work on a machine with
// CPU to spare, so CPU per transaction compares the cost of equal work
// without the contention of a saturated machine; TPS only shows whether a
// target kept up.
//
// -clients and -protocols choose the session table's rows only. PgBouncer
// and pgbench are needed only by the session and transaction tables.
package main
