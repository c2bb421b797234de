package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// rssResult is the idle-connection memory measurement.
type rssResult struct {
	wanted, opened  int
	dialConcurrency int
	openTime        time.Duration
	baselineKB      int64 // VmRSS after /ready, before any client
	hwmKB           int64 // VmHWM with every session open
	rssKB           int64 // VmRSS with every session open
	threads         int64
	pgBackends      int        // client backends of the Brownie role seen by Postgres
	errors          []string   // distinct session errors with counts, verbatim
	note            string     // why the measurement is incomplete, if it is
	logOpen         sidecarLog // sidecar output up to the measurement
	logClose        sidecarLog // sidecar output while the sessions closed at once
}

// rssConcurrency is how many sessions are being opened at once: enough to
// take seconds, not minutes, without a thundering herd of 2,000 TLS
// handshakes against two cores.
const rssConcurrency = 50

// measureIdleRSS restarts PostgreSQL with room for n backends, starts a
// fresh sidecar in session mode whose pool can hold n upstream connections
// (from an executable dropped from the page cache, as in the memory table),
// opens n client sessions (each reaches ReadyForQuery, so each holds one
// upstream connection) and reads the sidecar's peak RSS with all of them
// idle.
func (b *bench) measureIdleRSS(ctx context.Context, n int) (*rssResult, error) {
	res := &rssResult{wanted: n, dialConcurrency: rssConcurrency}
	maxConn := n + 200
	if err := b.restartPostgres(ctx, map[string]string{
		"max_connections": strconv.Itoa(maxConn),
		"shared_buffers":  "32MB",
	}); err != nil {
		res.note = fmt.Sprintf("PostgreSQL did not start with max_connections=%d: %v", maxConn, err)
		return res, err
	}
	if err := evictFileCache(b.sidecar); err != nil { // as the memory table's starts
		res.note = err.Error()
		return res, err
	}
	side, err := b.startSidecar(ctx, "sidecar-rss", map[string]string{
		"POOL_MODE": "session", "POOL_SIZE": strconv.Itoa(n + 50),
		"POOL_ACQUIRE_TIMEOUT": "2m", "MAX_CLIENT_CONN": strconv.Itoa(n + 1000),
		// With ~2,000 backends PostgreSQL on two cores takes seconds to
		// start each TLS backend while 50 are starting; the default 5s
		// would fail sessions for a reason unrelated to memory.
		"DB_CONNECT_TIMEOUT": "60s",
	})
	if err != nil {
		return res, err
	}
	measured := int64(-1) // log size when the measurement was taken
	defer func() {
		side.stop()
		if measured < 0 {
			res.logOpen = readSidecarLog(side.proc.logPath, 0, -1)
			return
		}
		res.logOpen = readSidecarLog(side.proc.logPath, 0, measured)
		res.logClose = readSidecarLog(side.proc.logPath, measured, -1)
	}()
	pid := side.proc.pid()
	if st, err := procStatus(pid); err == nil {
		res.baselineKB = st["VmRSS"]
	}

	b.logf("opening %d idle sessions to the sidecar (%d at a time)", n, rssConcurrency)
	start := time.Now()
	conns, errs := b.openSessions(ctx, side.addr.String(), n, "", 3*time.Minute)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	res.openTime = time.Since(start)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.opened = len(conns)
	for msg, count := range errs {
		res.errors = append(res.errors, fmt.Sprintf("%d× %s", count, msg))
	}
	sort.Strings(res.errors)

	// Let the sidecar settle (goroutines parked, buffers idle) before reading.
	time.Sleep(2 * time.Second)
	if side.proc.exited() {
		res.note = side.proc.exitError().Error()
		return res, side.proc.exitError()
	}
	st, err := procStatus(pid)
	if err != nil {
		return res, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	res.hwmKB, res.rssKB, res.threads = st["VmHWM"], st["VmRSS"], st["Threads"]
	measured = fileSize(side.proc.logPath)
	out, err := b.pg.Exec(ctx, "postgres",
		`SELECT count(*) FROM pg_stat_activity WHERE usename = 'brownie-fastapi-server' AND backend_type = 'client backend'`)
	if err == nil {
		res.pgBackends, _ = strconv.Atoi(out)
	}
	if res.opened < n {
		res.note = fmt.Sprintf("only %d of %d sessions reached ReadyForQuery", res.opened, n)
	}
	b.logf("%d/%d sessions open in %s; sidecar VmHWM %.1f MB, VmRSS %.1f MB (baseline %.1f MB); postgres sees %d backends",
		res.opened, n, res.openTime.Round(time.Millisecond), mb(res.hwmKB), mb(res.rssKB), mb(res.baselineKB), res.pgBackends)
	return res, nil
}

// openSessions opens n client sessions to addr, rssConcurrency at a time,
// each given timeout to reach ReadyForQuery (and, when query is not empty,
// to run it), and returns those that did (the caller closes them) and the
// others' errors with their counts. It logs every 500 sessions opened.
func (b *bench) openSessions(ctx context.Context, addr string, n int, query string, timeout time.Duration) ([]net.Conn, map[string]int) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		errs  = map[string]int{}
		wg    sync.WaitGroup
		sem   = make(chan struct{}, rssConcurrency)
	)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c, err := openSession(sctx, addr, query)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[err.Error()]++
				return
			}
			conns = append(conns, c)
			if len(conns)%500 == 0 {
				b.logf("  %d sessions open", len(conns))
			}
		}()
	}
	wg.Wait()
	return conns, errs
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

// procStatus reads the numeric fields of /proc/<pid>/status (kB values for
// the Vm* fields).
func procStatus(pid int) (map[string]int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}
