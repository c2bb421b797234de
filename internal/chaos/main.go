// Command chaos runs the failover scenario against a fresh stack: two
// shards of a primary and a streaming replica each, the sidecar binary
// in front, 3 readers doing keyed reads and 2 writers doing autocommit
// inserts with ids of their own (each on one connection, reconnecting
// after an error). At 8 s shard-0's replica is stopped (pg_ctl stop -m
// immediate), at 16 s shard-1's primary the same way, and 2 s later
// shard-1's replica is promoted (pg_ctl promote); the load runs to 40 s.
// Then every acknowledged write is looked up, row by row, on its shard's
// current primary, and the run is reported as markdown: statements and
// failures per window between the faults, each failure's class
// (ErrorResponse with SQLSTATE, or a bare close), the writes in flight at
// the kill, the time from the promotion to the first write on shard-1,
// the writes lost, and the failover targets met or not.
//
// With -sync-replication each replica is a synchronous standby and the
// shard map marks both shards synchronous. A primary whose only
// synchronous standby is down commits nothing until it returns
// (Postgres's rule, not the sidecar's), so that variant does not stop
// shard-0's replica.
//
// Usage (make chaos runs both variants):
//
//	go run ./internal/chaos [-sync-replication] [-sidecar bin/brownie-sidecar] [-dir .chaos] [-out FILE]
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/router"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// The scenario's schedule, from the start of the load.
const (
	replicaStopAt = 8 * time.Second
	primaryKillAt = 16 * time.Second
	promoteAfter  = 2 * time.Second
	runFor        = 40 * time.Second
	readers       = 3
	writers       = 2
	teamsPerShard = 8
)

const schema = `
CREATE TABLE IF NOT EXISTS chaos_items (team_id uuid NOT NULL, id bigint NOT NULL, PRIMARY KEY (team_id, id));
GRANT ALL ON chaos_items TO "brownie-fastapi-server";
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type options struct {
	sync         bool
	sidecar, dir string
	out          string
	commit       string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.BoolVar(&o.sync, "sync-replication", false, "make each replica a synchronous standby and the shards synchronous in the shard map (shard-0's replica is then not stopped)")
	fs.StringVar(&o.sidecar, "sidecar", "bin/brownie-sidecar", "the sidecar binary (make build)")
	fs.StringVar(&o.dir, "dir", ".chaos", "work directory (emptied first); the report is written there")
	fs.StringVar(&o.out, "out", "", "report file (default DIR/chaos-async.md or DIR/chaos-sync.md)")
	fs.StringVar(&o.commit, "commit", "", "commit the sidecar was built from, for the report (default: git describe)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.commit == "" {
		if b, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
			o.commit = strings.TrimSpace(string(b))
		}
	}
	dir, err := filepath.Abs(o.dir)
	if err == nil {
		o.dir = dir
		o.sidecar, err = filepath.Abs(o.sidecar)
	}
	if err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 1
	}
	if o.out == "" {
		name := "chaos-async.md"
		if o.sync {
			name = "chaos-sync.md"
		}
		o.out = filepath.Join(o.dir, name)
	}
	s := &stack{opts: o, log: stderr}
	defer s.cleanup()
	res, err := s.run(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 1
	}
	md := res.markdown()
	fmt.Fprint(stdout, md)
	if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 1
	}
	fmt.Fprintln(stderr, "chaos: report written to", o.out)
	return 0
}

// stack is the clusters and the sidecar of one run.
type stack struct {
	opts      options
	log       io.Writer
	primaries [2]*pgcluster.Cluster
	replicas  [2]*pgcluster.Cluster
	sidecar   *exec.Cmd
	sidecarCh chan error
	addr      string
	admin     string
	rt        *router.Router
	cleanups  []func()
}

func (s *stack) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "chaos: "+format+"\n", args...)
}

func (s *stack) cleanup() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
}

func (s *stack) run(ctx context.Context) (*result, error) {
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	teams, err := s.teams()
	if err != nil {
		return nil, err
	}
	return s.scenario(ctx, teams)
}

// start creates certificates, both shards (primary and replica) and the
// sidecar, and waits until the sidecar is ready and, with synchronous
// replication, reports each shard's standby synchronous.
func (s *stack) start(ctx context.Context) error {
	if err := os.RemoveAll(s.opts.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(s.opts.dir, 0o755); err != nil {
		return err
	}
	_ = os.Chmod(s.opts.dir, 0o755)
	certDir := filepath.Join(s.opts.dir, "certs")
	if err := brownietls.WriteDevCerts(certDir, pgcluster.BrownieRole); err != nil {
		return err
	}
	cmdLog, err := os.Create(filepath.Join(s.opts.dir, "commands.log"))
	if err != nil {
		return err
	}
	s.cleanups = append(s.cleanups, func() { cmdLog.Close() })
	base := pgcluster.Config{
		ServerCert: filepath.Join(certDir, "server.crt"),
		ServerKey:  filepath.Join(certDir, "server.key"),
		CACert:     filepath.Join(certDir, "ca.crt"),
		Log:        cmdLog,
	}
	for i := range 2 {
		pcfg := base
		pcfg.Dir = filepath.Join(s.opts.dir, fmt.Sprintf("shard-%d", i), "primary")
		p, err := pgcluster.Create(ctx, pcfg)
		if err != nil {
			return err
		}
		if err := p.Start(ctx); err != nil {
			return err
		}
		s.primaries[i] = p
		s.cleanups = append(s.cleanups, func() { _ = p.Kill() })
		if err := p.EnsureBrownieDatabase(ctx); err != nil {
			return err
		}
		if _, err := p.Exec(ctx, pgcluster.BrownieDatabase, schema); err != nil {
			return err
		}
		rcfg := base
		rcfg.Dir, rcfg.PrimaryOf = filepath.Join(s.opts.dir, fmt.Sprintf("shard-%d", i), "replica"), p
		r, err := pgcluster.Create(ctx, rcfg)
		if err != nil {
			return err
		}
		if err := r.Start(ctx); err != nil {
			return err
		}
		s.replicas[i] = r
		s.cleanups = append(s.cleanups, func() { _ = r.Kill() })
		if s.opts.sync {
			err = p.MakeSynchronous(ctx, pgcluster.StandbyName(rcfg.Dir))
		} else {
			err = p.MakeAsynchronous(ctx)
		}
		if err != nil {
			return err
		}
		s.logf("shard-%d: primary 127.0.0.1:%d, replica 127.0.0.1:%d", i, p.Port(), r.Port())
	}
	mapText := s.shardMap()
	m, err := router.ParseMap([]byte(mapText))
	if err != nil {
		return err
	}
	if s.rt, err = router.New(m); err != nil {
		return err
	}
	mapFile := filepath.Join(s.opts.dir, "shardmap.yaml")
	if err := os.WriteFile(mapFile, []byte(mapText), 0o644); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	admin, err := freeAddr()
	if err != nil {
		return err
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LANG=C",
		"SHARD_MAP_FILE=" + mapFile,
		"DB_HOST=localhost",
		"DB_PORT=" + strconv.Itoa(s.primaries[0].Port()),
		"LOCAL_CERT_DIR=" + certDir,
		"LISTEN_ADDR=" + addr,
		"ADMIN_ADDR=" + admin,
		"LOG_LEVEL=info",
		"SHUTDOWN_TIMEOUT=5s",
	}
	logFile, err := os.Create(filepath.Join(s.opts.dir, "sidecar.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(s.opts.sidecar, "run")
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, s.opts.dir, logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", s.opts.sidecar, err)
	}
	s.sidecar, s.sidecarCh = cmd, make(chan error, 1)
	go func() { s.sidecarCh <- cmd.Wait(); logFile.Close() }()
	s.cleanups = append(s.cleanups, func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.sidecarCh:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-s.sidecarCh
		}
	})
	s.addr, s.admin = addr, "http://"+admin
	s.logf("sidecar on %s, admin %s, log %s", addr, s.admin, logFile.Name())
	if err := s.waitFor(ctx, 30*time.Second, "sidecar ready", func() bool {
		code, _ := s.get("/ready")
		return code == 200
	}); err != nil {
		return err
	}
	if s.opts.sync {
		return s.waitFor(ctx, 15*time.Second, "each shard's standby reported synchronous", func() bool {
			st, err := s.status()
			if err != nil || len(st) != 2 {
				return false
			}
			for _, sh := range st {
				if len(sh.Hosts) != 2 || sh.Hosts[1].SyncState != "sync" {
					return false
				}
			}
			return true
		})
	}
	return nil
}

func (s *stack) shardMap() string {
	h := func(c *pgcluster.Cluster) string { return "127.0.0.1:" + strconv.Itoa(c.Port()) }
	syncLine := ""
	if s.opts.sync {
		syncLine = "\n    synchronous: true"
	}
	return fmt.Sprintf(`key_type: uuid
unlisted_tables: reject
shards:
  - name: shard-0
    primary: %s
    replicas: [%s]%s
  - name: shard-1
    primary: %s
    replicas: [%s]%s
tables:
  chaos_items: {sharded_by: team_id, keyless: reject}
`, h(s.primaries[0]), h(s.replicas[0]), syncLine, h(s.primaries[1]), h(s.replicas[1]), syncLine)
}

func (s *stack) get(path string) (int, string) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(s.admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *stack) status() ([]health.ShardStatus, error) {
	code, body := s.get("/status")
	if code != 200 {
		return nil, fmt.Errorf("/status %d: %s", code, body)
	}
	var st struct {
		Shards []health.ShardStatus `json:"shards"`
	}
	err := json.Unmarshal([]byte(body), &st)
	return st.Shards, err
}

// waitFor polls cond every 50 ms until it holds, the sidecar exits or
// timeout passes.
func (s *stack) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case err := <-s.sidecarCh:
			s.sidecarCh <- err
			return fmt.Errorf("waiting for %s: the sidecar exited: %v (see %s/sidecar.log)", what, err, s.opts.dir)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %s (see %s/sidecar.log)", what, timeout, s.opts.dir)
		}
	}
	return nil
}

// teams returns teamsPerShard teams placed on each shard.
func (s *stack) teams() ([2][]pgtype.UUID, error) {
	var out [2][]pgtype.UUID
	for len(out[0]) < teamsPerShard || len(out[1]) < teamsPerShard {
		var u pgtype.UUID
		_, _ = rand.Read(u.Bytes[:])
		u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
		u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
		u.Valid = true
		k, err := s.rt.ParseKey(uuidText(u))
		if err != nil {
			return out, err
		}
		i := 0
		if s.rt.Place(k) == "shard-1" {
			i = 1
		}
		if len(out[i]) < teamsPerShard {
			out[i] = append(out[i], u)
		}
	}
	return out, nil
}

func uuidText(u pgtype.UUID) string {
	b := u.Bytes
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// load is the readers and writers of one run.
type load struct {
	dsn   string
	teams [2][]pgtype.UUID
	t0    time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	ops   []op
	acked map[int64]int // acknowledged id → shard
	ids   atomic.Int64
}

func (l *load) record(o op, ackedID int64) {
	l.mu.Lock()
	l.ops = append(l.ops, o)
	if ackedID > 0 {
		l.acked[ackedID] = o.shard
	}
	l.mu.Unlock()
}

// worker runs statements on one connection until stop, reconnecting after
// an error. Shards alternate, teams are picked in turn.
func (l *load) worker(n int, read bool) {
	defer l.wg.Done()
	ctx := context.Background()
	var c *pgx.Conn
	defer func() {
		if c != nil {
			_ = c.Close(ctx)
		}
	}()
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		shard := (i + n) % 2
		team := l.teams[shard][(i/2)%len(l.teams[shard])]
		start := time.Since(l.t0)
		if c == nil {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			var err error
			c, err = pgx.Connect(cctx, l.dsn)
			cancel()
			if err != nil {
				c = nil
				l.record(op{start: start, end: time.Since(l.t0), read: read, shard: shard, class: classify(err, true), connect: true, worker: n}, 0)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			start = time.Since(l.t0)
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var err error
		var id int64
		if read {
			var got int64
			err = c.QueryRow(octx, "SELECT count(*) FROM chaos_items WHERE team_id = $1 AND id = $2", team, l.ids.Load()/2).Scan(&got)
		} else {
			id = l.ids.Add(1)
			_, err = c.Exec(octx, "INSERT INTO chaos_items (team_id, id) VALUES ($1, $2)", team, id)
		}
		cancel()
		o := op{start: start, end: time.Since(l.t0), read: read, shard: shard, worker: n}
		if err != nil {
			o.class, id = classify(err, false), 0
			_ = c.Close(ctx)
			c = nil
		}
		l.record(o, id)
	}
}

// scenario runs the load and injects the faults on schedule, then checks
// every acknowledged write on its shard's current primary.
func (s *stack) scenario(ctx context.Context, teams [2][]pgtype.UUID) (*result, error) {
	l := &load{
		dsn:   fmt.Sprintf("host=127.0.0.1 port=%s dbname=%s user=%s sslmode=disable", portOf(s.addr), pgcluster.BrownieDatabase, pgcluster.BrownieRole),
		teams: teams, stop: make(chan struct{}), acked: map[int64]int{},
	}
	res := &result{duration: runFor, killEvent: -1, promoteEvent: -1, sync: s.opts.sync, commit: s.opts.commit, variant: "asynchronous replication"}
	if s.opts.sync {
		res.variant = "synchronous replication (`-sync-replication`)"
	}
	l.t0 = time.Now()
	for i := range readers {
		l.wg.Add(1)
		go l.worker(i, true)
	}
	for i := range writers {
		l.wg.Add(1)
		go l.worker(readers+i, false)
	}
	defer func() {
		select {
		case <-l.stop:
		default:
			close(l.stop)
			l.wg.Wait()
		}
	}()
	sleepUntil := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(l.t0.Add(d))):
			return nil
		}
	}
	inject := func(name, cmd string, f func() error) error {
		at := time.Since(l.t0)
		err := f()
		res.events = append(res.events, event{name: name, cmd: cmd, at: at, done: time.Since(l.t0)})
		s.logf("%s at %s: %v", name, at.Round(time.Millisecond), err)
		return err
	}
	if err := sleepUntil(replicaStopAt); err != nil {
		return nil, err
	}
	if s.opts.sync {
		res.skipped = append(res.skipped, "shard-0's replica stop at 8 s: it is the only synchronous standby of shard-0's primary, whose commits would wait until it returned (Postgres's rule)")
	} else if err := inject("shard-0 replica stopped", "pg_ctl stop -m immediate", s.replicas[0].Kill); err != nil {
		return nil, err
	}
	if err := sleepUntil(primaryKillAt); err != nil {
		return nil, err
	}
	if err := inject("shard-1 primary stopped", "pg_ctl stop -m immediate", s.primaries[1].Kill); err != nil {
		return nil, err
	}
	res.killEvent = len(res.events) - 1
	if err := sleepUntil(res.events[res.killEvent].done + promoteAfter); err != nil {
		return nil, err
	}
	if err := inject("shard-1 replica promoted", "pg_ctl promote", func() error { return s.replicas[1].Promote(ctx) }); err != nil {
		return nil, err
	}
	res.promoteEvent = len(res.events) - 1
	if err := sleepUntil(runFor); err != nil {
		return nil, err
	}
	close(l.stop)
	l.wg.Wait()
	res.duration = time.Since(l.t0)
	res.ops = l.ops

	// Every acknowledged write on its shard's current primary.
	current := [2]*pgcluster.Cluster{s.primaries[0], s.replicas[1]}
	for shard, c := range current {
		out, err := c.Exec(ctx, pgcluster.BrownieDatabase, "SELECT id FROM chaos_items")
		if err != nil {
			return nil, fmt.Errorf("shard-%d: %w", shard, err)
		}
		have := map[int64]bool{}
		for _, f := range strings.Fields(out) {
			id, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("shard-%d: id %q: %w", shard, f, err)
			}
			have[id] = true
		}
		for id, sh := range l.acked {
			if sh != shard {
				continue
			}
			res.acked[shard]++
			if !have[id] {
				res.lost[shard]++
			}
		}
	}
	return res, nil
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
