package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

// target is one way of reaching the database.
type target struct {
	name string
	host string
	port int
	tls  bool // verify-full with the client certificate; else sslmode=disable
	// noPrepared marks PgBouncer in transaction mode: 1.18 has no
	// protocol-level prepared statements, so -M prepared is expected to
	// fail through it. The run still happens and is reported as failed.
	noPrepared bool
	// pid is the pooler's process, whose CPU time per transaction is
	// measured; 0 for PostgreSQL reached directly.
	pid int
	// pgPids are the postmasters of the clusters behind the target, whose
	// CPU time (with every backend's) the sharded table measures too.
	pgPids []int
	// peers are further clusters (ports on host) each client of the
	// sharded table connects to as well, for peerTx, which then runs every
	// workload of the target instead of the workload's own transaction.
	peers  []int
	peerTx peerTxFunc
	// pprofAddr is the admin address of a sidecar started with
	// ADMIN_PPROF=true, whose CPU profile runPgbench fetches during every
	// run (-cpu-profile); empty for no profile.
	pprofAddr string
}

// result is the outcome of one pgbench run.
type result struct {
	tps       float64 // excluding initial connection time
	latencyMs float64 // "latency average"
	processed int64   // transactions actually processed
	failedTx  int64   // "number of failed transactions"
	exitErr   error   // pgbench's exit status, if not 0
	stderr    []string
	parsed    bool
	logPath   string

	// Set by combineRuns for a cell of several runs (-repeat): tps and
	// latencyMs are then medians over the runs that had results.
	runs       int       // runs combined; 0 for a single run
	failedRuns int       // of them, runs that failed
	runTPS     []float64 // TPS of each run that had results, in run order
	incomplete int       // runs without tps/latency in their output

	// cpuUs is the pooler's CPU time (user + system, all threads) per
	// transaction in microseconds, 0 when not measured; for a combined
	// cell, the median over the runs that measured it.
	cpuUs float64
	// userUs and sysUs split cpuUs into the time spent in user mode and
	// in the kernel (system calls and interrupts included), both 0 when
	// not measured; for a combined cell, each is the median over the runs
	// that measured it.
	userUs, sysUs float64
	// pgCPUUs is, likewise, the CPU time per transaction of the PostgreSQL
	// clusters the run used (every process of each, from /proc), 0 when
	// the target names none (pgPids).
	pgCPUUs float64
	// clientUs is the CPU time per transaction of the client itself
	// (pgbench, every thread, from its resource usage), 0 when not
	// measured. With cpuUs and pgCPUUs it is the whole machine's work for
	// a transaction: on a machine whose CPUs are all busy, TPS follows the
	// sum, and a pooler can cost its client or the server more as well as
	// itself (one more wake-up per answer, say).
	clientUs float64
	// busy is the share of the machine's CPU time (every CPU, over the
	// run's wall time) that the pooler (if any), PostgreSQL and pgbench
	// used together, 0 when any of them was not measured; for a combined
	// cell, the median over the runs that measured it. TPS is busy × CPUs
	// over their CPU per transaction: two runs of equal cost per
	// transaction differ in TPS by how busy they kept the machine.
	busy float64

	// volCS and involCS are the pooler's context switches per transaction
	// (every thread), voluntary (a thread waited: for the network, a lock,
	// a timer) and involuntary (the kernel preempted it), set when
	// switched; for a combined cell, medians over the runs that measured
	// them.
	volCS, involCS float64
	switched       bool

	// sysReads, sysWrites and sysWaits are the pooler's system calls per
	// transaction (every thread, counted by perf: syscalls.go): reads
	// (read, recvfrom), writes (write, sendto) and epoll waits
	// (epoll_wait, epoll_pwait), set when sysCounted; for a combined cell,
	// medians over the runs that counted them.
	sysReads, sysWrites, sysWaits float64
	sysCounted                    bool

	// p50Ms and p95Ms are the median and 95th percentile latency, measured
	// only by the sharded table's own client (workload.go), 0 otherwise;
	// for a combined cell, medians like latencyMs.
	p50Ms, p95Ms float64
}

// failed reports whether the run cannot be trusted: pgbench failed, said
// something on stderr (with -n it prints nothing there unless a client
// errored or aborted), or its output had no results. A combined cell has
// failed if any of its runs did.
func (r result) failed() bool {
	return r.exitErr != nil || len(r.stderr) > 0 || !r.parsed || r.failedTx > 0 || r.incomplete > 0
}

// preparedErrorRE matches what PostgreSQL answers a client whose prepared
// statement lives on another upstream connection than the one serving it:
// `prepared statement "P_0" does not exist` or `... already exists`.
var preparedErrorRE = regexp.MustCompile(`prepared statement "[^"]*" (does not exist|already exists)`)

// preparedError returns the first stderr line of the run that names a
// missing or duplicate prepared statement, or "".
func (r result) preparedError() string {
	for _, line := range r.stderr {
		if preparedErrorRE.MatchString(line) {
			return line
		}
	}
	return ""
}

// combineRuns folds the runs of one cell into one result: median TPS and
// median latencies (mean, p50, p95) over the runs that produced numbers
// (each median taken on its own), transaction counts summed, and the first
// failed run's exit status, stderr and log kept so that the cell fails if
// any run failed. A single run is returned unchanged.
func combineRuns(runs []result) result {
	if len(runs) == 1 {
		return runs[0]
	}
	out := result{runs: len(runs)}
	var tps, lat, p50, p95, cpu, user, sys, pgCPU, client, busy, vol, invol, reads, writes, waits []float64
	var failed *result
	for i, r := range runs {
		out.processed += r.processed
		out.failedTx += r.failedTx
		if r.cpuUs > 0 {
			cpu = append(cpu, r.cpuUs)
		}
		if r.userUs > 0 || r.sysUs > 0 {
			user, sys = append(user, r.userUs), append(sys, r.sysUs)
		}
		if r.pgCPUUs > 0 {
			pgCPU = append(pgCPU, r.pgCPUUs)
		}
		if r.clientUs > 0 {
			client = append(client, r.clientUs)
		}
		if r.busy > 0 {
			busy = append(busy, r.busy)
		}
		if r.switched {
			vol, invol = append(vol, r.volCS), append(invol, r.involCS)
		}
		if r.sysCounted {
			reads, writes, waits = append(reads, r.sysReads), append(writes, r.sysWrites), append(waits, r.sysWaits)
		}
		if r.parsed {
			tps = append(tps, r.tps)
			lat = append(lat, r.latencyMs)
			p50 = append(p50, r.p50Ms)
			p95 = append(p95, r.p95Ms)
		} else {
			out.incomplete++
		}
		if r.failed() {
			out.failedRuns++
			if failed == nil {
				failed = &runs[i]
			}
		}
	}
	out.runTPS = tps
	out.cpuUs, out.userUs, out.sysUs, out.pgCPUUs = median(cpu), median(user), median(sys), median(pgCPU)
	out.clientUs, out.busy = median(client), median(busy)
	if len(vol) > 0 {
		out.switched, out.volCS, out.involCS = true, median(vol), median(invol)
	}
	if len(reads) > 0 {
		out.sysCounted, out.sysReads, out.sysWrites, out.sysWaits = true, median(reads), median(writes), median(waits)
	}
	if len(tps) > 0 {
		out.parsed = true
		out.tps, out.latencyMs = median(tps), median(lat)
		out.p50Ms, out.p95Ms = median(p50), median(p95)
	}
	if failed != nil {
		out.exitErr, out.stderr, out.logPath = failed.exitErr, failed.stderr, failed.logPath
	} else if len(runs) > 0 {
		out.logPath = runs[len(runs)-1].logPath
	}
	return out
}

// median returns the middle value of xs (the mean of the two middle values
// for an even count), or 0 for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// spread is half the min-max range of the runs' TPS relative to the
// median, in percent; 0 for a single run.
func (r result) spread() float64 {
	if len(r.runTPS) < 2 || r.tps == 0 {
		return 0
	}
	return (slices.Max(r.runTPS) - slices.Min(r.runTPS)) / 2 / r.tps * 100
}

// summary is a one-line description of a failed run.
func (r result) summary() string {
	var parts []string
	if r.exitErr != nil {
		parts = append(parts, "pgbench: "+r.exitErr.Error())
	}
	if r.failedTx > 0 {
		parts = append(parts, fmt.Sprintf("%d failed transactions", r.failedTx))
	}
	if !r.parsed {
		parts = append(parts, "no TPS or latency measured")
	} else if r.incomplete > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d runs without tps/latency in output", r.incomplete, r.runs))
	}
	if len(r.stderr) > 0 {
		parts = append(parts, r.stderr[0])
	}
	return strings.Join(parts, "; ")
}

// runPgbench runs pgbench -S against t and parses its output, which is also
// kept in the work directory. tag, if set, prefixes the log file name.
func (b *bench) runPgbench(ctx context.Context, t target, proto string, clients int, dur time.Duration, tag string) result {
	args := pgbenchArgs(t, proto, clients, dur, b.opts.rate)
	vars := map[string]string{"PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
	if t.tls {
		vars["PGSSLMODE"] = "verify-full"
		vars["PGSSLROOTCERT"] = filepath.Join(b.certDir, "ca.crt")
		vars["PGSSLCERT"] = filepath.Join(b.certDir, "client.crt")
		vars["PGSSLKEY"] = filepath.Join(b.certDir, "client.key") // 0600, owned by us
	}
	rctx, cancel := context.WithTimeout(ctx, dur+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, b.pgbench, args...)
	cmd.Env = cleanEnv("", vars)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	run := fmt.Sprintf("%s-c%d-%s", proto, clients, t.name)
	if tag != "" {
		run = tag + "-" + run
	}
	// perf attaches before the CPU readings and detaches after them.
	perf := b.startSyscallCount(t.pid, run)
	userBefore, cpuBefore, cpuErr := cpuSplit(t.pid)
	volBefore, involBefore, csErr := ctxSwitches(t.pid)
	pgBefore, pgErr := treeTicks(t.pgPids...)
	prof := startCPUProfile(rctx, t, dur)
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	userAfter, cpuAfter, cpuErr2 := cpuSplit(t.pid)
	volAfter, involAfter, csErr2 := ctxSwitches(t.pid)
	pgAfter, pgErr2 := treeTicks(t.pgPids...)
	sysCalls, sysOK := b.stopSyscallCount(perf)

	b.collectProfile(prof, run)
	logDir := filepath.Join(b.dir, "pgbench")
	_ = os.MkdirAll(logDir, 0o755)
	logPath := filepath.Join(logDir, run+".log")
	_ = os.WriteFile(logPath, []byte(fmt.Sprintf("$ %s pgbench %s\n--- stdout ---\n%s--- stderr ---\n%s",
		strings.Join(envList(vars), " "), strings.Join(args, " "), stdout.Bytes(), stderr.Bytes())), 0o644)

	r := parsePgbench(stdout.String())
	r.exitErr = err
	r.logPath = logPath
	if t.pid > 0 && cpuErr == nil && cpuErr2 == nil && r.processed > 0 {
		r.cpuUs = ticksPerTx(cpuAfter-cpuBefore, r.processed)
		r.userUs = ticksPerTx(userAfter-userBefore, r.processed)
		r.sysUs = r.cpuUs - r.userUs
	}
	if t.pid > 0 && csErr == nil && csErr2 == nil && r.processed > 0 {
		n := float64(r.processed)
		r.switched, r.volCS, r.involCS = true, float64(volAfter-volBefore)/n, float64(involAfter-involBefore)/n
	}
	if sysOK && r.processed > 0 {
		r.sysCounted = true
		r.sysReads, r.sysWrites, r.sysWaits = sysCalls.perTx(r.processed)
	}
	if len(t.pgPids) > 0 && pgErr == nil && pgErr2 == nil && r.processed > 0 {
		r.pgCPUUs = ticksPerTx(pgAfter-pgBefore, r.processed)
	}
	if ru, ok := rusage(cmd.ProcessState); ok && r.processed > 0 {
		r.clientUs = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3 / float64(r.processed)
	}
	if (t.pid == 0 || r.cpuUs > 0) && r.pgCPUUs > 0 && r.clientUs > 0 && wall > 0 { // no pooler: PostgreSQL reached directly
		used := r.machineUs() * float64(r.processed) // µs
		r.busy = used / float64(wall.Microseconds()) / float64(runtime.NumCPU())
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		if line = strings.TrimRight(line, " \r"); line != "" {
			r.stderr = append(r.stderr, line)
		}
	}
	return r
}

// protoConnect is the pseudo-protocol of the connect row: pgbench -C, a
// new connection for every transaction (startup, authentication, the
// greeting's parameters, one SELECT over the simple protocol, Terminate),
// the cost an application without a pool of its own pays per request.
const protoConnect = "connect"

// pgbenchArgs is the pgbench command line of one run of proto (a pgbench
// protocol, or protoConnect) with clients against t for dur, at most rate
// transactions per second over all clients when rate > 0 (pgbench -R).
func pgbenchArgs(t target, proto string, clients int, dur time.Duration, rate int) []string {
	mode := []string{"-M", proto}
	if proto == protoConnect {
		mode = []string{"-C", "-M", "simple"}
	}
	args := append([]string{"-S"}, mode...)
	args = append(args, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(int(dur/time.Second)), "-n")
	if rate > 0 {
		args = append(args, "-R", strconv.Itoa(rate))
	}
	return append(args, "-h", t.host, "-p", strconv.Itoa(t.port), "-U", pgcluster.BrownieRole, pgcluster.BrownieDatabase)
}

func envList(m map[string]string) []string {
	var out []string
	for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"} {
		if v, ok := m[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

var (
	// With -C (a connection per transaction) pgbench counts the
	// connections in: "including reconnection times".
	tpsRE       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((?:without initial connection time|including reconnection times)\)`)
	latencyRE   = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	processedRE = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	failedRE    = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbench extracts the numbers from pgbench's standard output. parsed
// is set when both TPS and mean latency were found.
func parsePgbench(out string) result {
	var r result
	num := func(re *regexp.Regexp) (string, bool) {
		m := re.FindStringSubmatch(out)
		if m == nil {
			return "", false
		}
		return m[1], true
	}
	tps, ok1 := num(tpsRE)
	lat, ok2 := num(latencyRE)
	if ok1 && ok2 {
		var err1, err2 error
		r.tps, err1 = strconv.ParseFloat(tps, 64)
		r.latencyMs, err2 = strconv.ParseFloat(lat, 64)
		r.parsed = err1 == nil && err2 == nil
	}
	if s, ok := num(processedRE); ok {
		r.processed, _ = strconv.ParseInt(s, 10, 64)
	}
	if s, ok := num(failedRE); ok {
		r.failedTx, _ = strconv.ParseInt(s, 10, 64)
	}
	return r
}

// clockTicks is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTicks = 100

// cpuTicks returns the CPU time (utime + stime, every thread) process pid
// has used, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	_, total, err := cpuSplit(pid)
	return total, err
}

// cpuSplit returns the CPU time process pid has used in user mode (utime)
// and in all (utime + stime), every thread, in clock ticks.
func cpuSplit(pid int) (user, total int64, err error) {
	if pid <= 0 {
		return 0, 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	_, utime, stime, err := parseStatTimes(b)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return utime, utime + stime, nil
}

// ctxSwitches returns the context switches every thread of process pid has
// had so far, voluntary and involuntary, summed over /proc/PID/task/*/status.
// A thread that exits between two readings takes its switches with it (the
// poolers keep theirs while they run).
func ctxSwitches(pid int) (vol, invol int64, err error) {
	if pid <= 0 {
		return 0, 0, errors.New("no process")
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	read := 0
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "status"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		v, i, err := parseSwitches(b)
		if err != nil {
			return 0, 0, fmt.Errorf("%s/%s/status: %w", dir, task.Name(), err)
		}
		vol, invol, read = vol+v, invol+i, read+1
	}
	if read == 0 {
		return 0, 0, fmt.Errorf("%s: no thread's status could be read", dir)
	}
	return vol, invol, nil
}

// parseSwitches returns the voluntary_ctxt_switches and
// nonvoluntary_ctxt_switches of the text of a /proc status file.
func parseSwitches(b []byte) (vol, invol int64, err error) {
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "voluntary_ctxt_switches":
			dst = &vol
		case "nonvoluntary_ctxt_switches":
			dst = &invol
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		*dst, found = n, found+1
	}
	if found != 2 {
		return 0, 0, errors.New("no context switch counts")
	}
	return vol, invol, nil
}

// parseStat returns the parent pid, the CPU time (utime + stime) and the
// CPU time of the children it has waited for (cutime + cstime: children
// that exited), in clock ticks, from the text of /proc/PID/stat.
func parseStat(b []byte) (ppid int, ticks, reaped int64, err error) {
	st, err := parseStatFields(b)
	return st.ppid, st.utime + st.stime, st.cutime + st.cstime, err
}

// parseStatTimes returns the parent pid and the CPU time in user mode
// (utime) and in the kernel (stime), in clock ticks, from the text of
// /proc/PID/stat.
func parseStatTimes(b []byte) (ppid int, utime, stime int64, err error) {
	st, err := parseStatFields(b)
	return st.ppid, st.utime, st.stime, err
}

// procStat holds the fields of /proc/PID/stat the bench reads; times are
// in clock ticks.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64
}

// parseStatFields parses the text of /proc/PID/stat; on error every field
// is zero.
func parseStatFields(b []byte) (procStat, error) {
	// The command name (field 2) is parenthesised and may hold spaces;
	// ppid is field 4, utime, stime, cutime and cstime are fields 14 to
	// 17: the 2nd and the 12th to 15th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procStat{}, errors.New("too few fields")
	}
	var st procStat
	var errs [5]error
	st.ppid, errs[0] = strconv.Atoi(f[1])
	for j, t := range []*int64{&st.utime, &st.stime, &st.cutime, &st.cstime} {
		*t, errs[j+1] = strconv.ParseInt(f[11+j], 10, 64)
	}
	if err := errors.Join(errs[:]...); err != nil {
		return procStat{}, err
	}
	return st, nil
}

// ticksPerTx converts a CPU time in clock ticks into microseconds per
// transaction of the processed ones (more than 0).
func ticksPerTx(ticks, processed int64) float64 {
	return float64(ticks) * 1e6 / clockTicks / float64(processed)
}

// machineUs is the whole machine's CPU per transaction in microseconds:
// the pooler's, PostgreSQL's and the client's (each 0 when not measured).
func (r result) machineUs() float64 { return r.cpuUs + r.pgCPUUs + r.clientUs }

// rusage returns the resource usage of an exited child (its threads
// included), or false when there is none (it did not start).
func rusage(ps *os.ProcessState) (*syscall.Rusage, bool) {
	if ps == nil {
		return nil, false
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	return ru, ok && ru != nil
}

// treeTicks returns the CPU time, in clock ticks, of the processes roots
// and of their children: a PostgreSQL postmaster and its backends and
// background workers. A child that exited counts too, once its root has
// waited for it (the root's cutime and cstime), so the difference of two
// readings holds the backends of connections that ended in between: a
// client that connects straight to PostgreSQL ends its backends as the
// run ends.
func treeTicks(roots ...int) (int64, error) {
	return treeTicksOf(procDir{}, roots...)
}

// procFS is what treeTicksOf reads of /proc: the pids it lists and the
// text of one process's stat file (an error once the process is gone).
type procFS interface {
	pids() ([]int, error)
	stat(pid int) ([]byte, error)
}

// procDir is the procFS of the running system.
type procDir struct{}

func (procDir) pids() ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func (procDir) stat(pid int) ([]byte, error) {
	return os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
}

// maxTreeReads bounds treeTicksOf's readings when children keep being
// waited for while it reads.
const maxTreeReads = 20

// treeTicksOf is treeTicks over fs. A child waited for while the children
// are read would count twice (read alive, then in its root's reaped time)
// or not at all (in neither): the roots are read before and after the
// children, and the reading is made again until no root waited for a
// child in between. At the end of a run straight to PostgreSQL every
// backend exits at once: counted twice in the next target's first
// reading, they would halve its PostgreSQL CPU.
func treeTicksOf(fs procFS, roots ...int) (int64, error) {
	if len(roots) == 0 {
		return 0, nil
	}
	readRoots := func() (ticks, reaped int64, err error) {
		for _, pid := range roots {
			b, err := fs.stat(pid)
			if err != nil {
				return 0, 0, err
			}
			_, t, r, err := parseStat(b)
			if err != nil {
				return 0, 0, err
			}
			ticks, reaped = ticks+t, reaped+r
		}
		return ticks, reaped, nil
	}
	for range maxTreeReads {
		_, reapedBefore, err := readRoots()
		if err != nil {
			return 0, err
		}
		pids, err := fs.pids()
		if err != nil {
			return 0, err
		}
		var children int64
		for _, pid := range pids {
			if slices.Contains(roots, pid) {
				continue
			}
			b, err := fs.stat(pid)
			if err != nil {
				continue // exited meanwhile
			}
			ppid, ticks, _, err := parseStat(b)
			if err == nil && slices.Contains(roots, ppid) {
				children += ticks
			}
		}
		ticks, reaped, err := readRoots()
		if err != nil {
			return 0, err
		}
		if reaped == reapedBefore {
			return ticks + reaped + children, nil
		}
	}
	return 0, fmt.Errorf("children of %v kept exiting over %d readings", roots, maxTreeReads)
}
