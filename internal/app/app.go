// Package app wires the sidecar's components together for the
// brownie-sidecar binary. It receives everything from cmd (arguments,
// environment map, output streams, a context cancelled on SIGTERM/SIGINT)
// and never reads the process environment or exits by itself, so tests run
// the real binary's code in-process.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/brownie/brownie-sidecar/admin"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/threads"
	"github.com/brownie/brownie-sidecar/proxy"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// Version is set at build time with -ldflags.
var Version = "dev"

// Exit codes.
const (
	ExitOK     = 0
	ExitFail   = 1
	ExitConfig = 2
)

// IO is what a command may use of its process: where it writes and, for
// the sidecar, how it changes its thread count.
type IO struct {
	Stdout, Stderr io.Writer
	// Threads, when its Set is not nil, lets the sidecar adapt the number
	// of threads that run its goroutines (internal/threads); cmd passes
	// runtime.GOMAXPROCS when the environment does not fix GOMAXPROCS.
	// Tests leave it empty: the test process keeps its own count.
	Threads Threads
}

// Threads is how the sidecar changes its thread count: Set applies a
// count between 1 and Max, starting from 1. Policy, when set, replaces
// threads.DefaultPolicy(Max) (tests).
type Threads struct {
	Set    func(int)
	Max    int
	Policy *threads.Policy
}

const usage = `usage: brownie-sidecar [command]

commands:
  run                     run the sidecar (default), configured from the environment
  dev [--reset] [--sync-replication]
                          run the embedded development stack (two shards, each a
                          primary and a replica, synchronous with
                          --sync-replication) and the sidecar on 127.0.0.1:6432
  certs dev --out DIR     write a development CA, server and client certificates
  backup create           back up every shard now, through the running sidecar's admin API
  backup list             list the backups
  backup show NAME        show one backup's manifest
  backup restore NAME --into DB
                          restore into a new database DB on every shard
  backup restore NAME --confirm NAME
                          restore in place, replacing the live database
                          (backup commands: --addr HOST:PORT overrides ADMIN_ADDR and
                          METRICS_PORT; the token comes from ADMIN_TOKEN or ADMIN_TOKEN_FILE)
  inject                  serve the sidecar injector (Kubernetes mutating admission
                          webhook), configured from the INJECT_* variables
  version                 print the version
`

// command is one subcommand of the binary. Main dispatches through
// commands, and the runbook test checks every invocation the docs name
// against the same table.
type command struct {
	name string
	// subs are the words accepted after the name (backup create…); nil
	// when the command takes none.
	subs []string
	// flags returns the command's flag set (fresh at each call), nil when
	// it has no flags.
	flags func() *flag.FlagSet
	run   func(ctx context.Context, args []string, environ map[string]string, out IO) int
}

// commands are the binary's subcommands.
var commands = []command{
	{name: "run", run: func(ctx context.Context, _ []string, environ map[string]string, out IO) int {
		return runCommand(ctx, environ, out, nil)
	}},
	{name: "dev", run: devCommand, flags: func() *flag.FlagSet { fs, _ := devFlags(); return fs }},
	{name: "certs", subs: []string{"dev"}, run: func(_ context.Context, args []string, environ map[string]string, out IO) int {
		return certsCommand(args, environ, out)
	}, flags: func() *flag.FlagSet { fs, _, _ := certsDevFlags(nil); return fs }},
	{name: "backup", subs: backupSubcommands, run: backupCommand,
		flags: func() *flag.FlagSet { fs, _, _, _ := backupFlags(); return fs }},
	{name: "inject", run: injectCommand},
	{name: "version", run: func(_ context.Context, _ []string, _ map[string]string, out IO) int {
		fmt.Fprintln(out.Stdout, "brownie-sidecar", Version)
		return ExitOK
	}},
}

// Main runs the command named by args (args[0] is the program name) and
// returns the process exit code. ctx is cancelled to request a graceful
// shutdown.
func Main(ctx context.Context, args []string, environ map[string]string, out IO) int {
	cmd, rest := "run", []string(nil)
	if len(args) > 1 {
		cmd, rest = args[1], args[2:]
	}
	switch cmd {
	case "--version":
		cmd = "version"
	case "help", "-h", "--help":
		fmt.Fprint(out.Stdout, usage)
		return ExitOK
	}
	for _, c := range commands {
		if c.name == cmd {
			return c.run(ctx, rest, environ, out)
		}
	}
	fmt.Fprintf(out.Stderr, "unknown command %q\n%s", cmd, usage)
	return ExitConfig
}

// Started describes a running sidecar, for the dev command and tests.
type Started struct {
	ProxyAddrs []net.Addr
	AdminAddr  net.Addr
}

// runCommand loads the configuration and runs the sidecar until ctx ends.
// onStart, if set, is called once the listeners are open.
func runCommand(ctx context.Context, environ map[string]string, out IO, onStart func(Started)) int {
	cfg, err := config.Load(environ)
	if err != nil {
		fmt.Fprintln(out.Stderr, err)
		return ExitConfig
	}
	log, err := newLogger(cfg, out.Stderr)
	if err != nil {
		fmt.Fprintln(out.Stderr, err)
		return ExitConfig
	}
	defer log.Sync()
	if err := Run(ctx, cfg, environ, log, out.Threads, onStart); err != nil {
		log.Error("sidecar failed", zap.Error(err))
		return ExitFail
	}
	return ExitOK
}

func newLogger(cfg config.Config, w io.Writer) (*zap.Logger, error) {
	var level zapcore.Level
	lv := strings.ToLower(cfg.LogLevel)
	if lv == "warning" {
		lv = "warn"
	}
	if err := level.UnmarshalText([]byte(lv)); err != nil {
		return nil, err
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "timestamp"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	enc := zapcore.NewJSONEncoder(encCfg)
	if cfg.LogFormat == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core).Named("brownie-sidecar"), nil
}

// Run runs the sidecar with a validated configuration until ctx ends, then
// shuts down gracefully: readiness turns 503, listeners close, sessions
// drain within ShutdownTimeout. It returns nil after a clean shutdown.
// environ is the environment cfg was loaded from; the backup worker gets
// what is left of it without the configuration's own variables. th, when
// its Set is not nil, adapts the thread count while the sidecar runs.
func Run(ctx context.Context, cfg config.Config, environ map[string]string, log *zap.Logger, th Threads, onStart func(Started)) error {
	startedAt := time.Now()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)

	certs, err := newCertSource(cfg, log.Named("certs"))
	if err != nil {
		return fmt.Errorf("upstream client certificate: %w", err)
	}
	reg.MustRegister(newCertCollector(certs))

	rt, mapData, err := newRouter(cfg)
	if err != nil {
		return err
	}
	px, err := proxy.New(proxy.Config{
		Listen: cfg.Listen, Pool: cfg.Pool, Database: cfg.DB.Name, User: cfg.DB.User,
		SSLMode: cfg.DB.SSLMode, ConnectTimeout: cfg.DB.ConnectTimeout, ShutdownTimeout: cfg.ShutdownTimeout,
		Routing: cfg.Routing,
	}, proxy.Deps{Log: log.Named("proxy"), Certs: certs, Router: rt, Metrics: m})
	if err != nil {
		return err
	}
	reg.MustRegister(px.Collector())
	if err := px.Listen(); err != nil {
		return err
	}

	bm, err := newBackups(cfg, environ, log.Named("backup"), reg, certs, rt, px)
	if err != nil {
		px.Close()
		return fmt.Errorf("backups: %w", err)
	}
	if bm != nil {
		defer bm.Close()
	}

	dbm, err := newDBMetrics(cfg, log.Named("dbmetrics"), reg, rt, px)
	if err != nil {
		px.Close()
		return fmt.Errorf("database metrics: %w", err)
	}

	watcher := newMapWatcher(cfg.Routing.ShardMapFile, mapData, rt, log.Named("shardmap"), m)
	checks := []admin.Check{
		{Name: "proxy", Ready: px.Ready},
		{Name: "certificate", Ready: certReady(certs)},
		{Name: "shards", Ready: px.ShardsReady},
		{Name: "shard_map", Ready: watcher.Ready},
	}
	reg.MustRegister(newReadyCollector(checks))

	// --- admin port ---
	// started turns /startup to 200 once the listeners are open. adminCtx
	// is the base of every admin request's context: cancelling it aborts a
	// backup or restore still running when shutdown gives up waiting.
	var adminLn net.Listener
	var adminSrv *http.Server
	var started atomic.Bool
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	defer stopAdmin()
	if cfg.Admin.Enabled() {
		token, err := adminToken(cfg.Admin)
		if err != nil {
			px.Close()
			return err
		}
		adminLn, err = net.Listen("tcp", cfg.Admin.Address())
		if err != nil {
			px.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
		var gatherer prometheus.Gatherer
		if cfg.Admin.MetricsEnabled {
			gatherer = reg
		}
		var backups admin.Backups // a nil interface when backups are off: 503
		if bm != nil {
			backups = bm
		}
		h := admin.New(admin.Deps{
			Log: log.Named("admin"), Gatherer: gatherer, Pprof: cfg.Admin.Pprof, Token: token,
			Started: started.Load, Version: Version, StartedAt: startedAt, Backups: backups,
			Checks: checks,
			Status: map[string]func() any{
				"pools":       func() any { return px.Status().Pools },
				"sessions":    func() any { return px.Status().Sessions },
				"certificate": certStatus(certs),
				"shards":      func() any { return px.ShardStatus() },
			},
		})
		adminSrv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
			BaseContext: func(net.Listener) context.Context { return adminCtx }}
		go func() {
			if err := adminSrv.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server failed", zap.Error(err))
			}
		}()
	}

	mapCtx, stopMap := context.WithCancel(context.Background())
	mapDone := make(chan struct{})
	go func() {
		defer close(mapDone)
		if cfg.Routing.ShardMapFile == "" {
			return
		}
		if err := watcher.Run(mapCtx); err != nil {
			log.Error("shard map watcher failed", zap.Error(err))
		}
	}()

	// Scheduled backups (one sidecar of the cluster runs each slot: they
	// elect with an advisory lock on the first shard's primary).
	backupsDone := make(chan struct{})
	go func() {
		defer close(backupsDone)
		if bm == nil {
			return
		}
		if err := bm.Run(mapCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("backup scheduler failed", zap.Error(err))
		}
	}()

	// Database metrics (one sidecar of the cluster collects: they elect
	// with an advisory lock of their own on the first shard's primary).
	dbmDone := make(chan struct{})
	go func() {
		defer close(dbmDone)
		if dbm != nil {
			_ = dbm.Run(mapCtx)
		}
	}()

	threadsDone := make(chan struct{})
	go func() {
		defer close(threadsDone)
		if th.Set != nil {
			runThreads(mapCtx, th, px, log.Named("threads"))
		}
	}()

	certCtx, stopCerts := context.WithCancel(context.Background())
	certsDone := make(chan struct{})
	go func() {
		defer close(certsDone)
		if err := certs.Run(certCtx); err != nil {
			log.Error("certificate watcher failed", zap.Error(err))
		}
	}()

	st := Started{ProxyAddrs: px.Addrs()}
	if adminLn != nil {
		st.AdminAddr = adminLn.Addr()
	}
	log.Info("sidecar started", zap.String("version", Version), zap.Stringers("listen", st.ProxyAddrs),
		zap.Stringer("admin", st.AdminAddr), zap.Strings("shards", rt.Map().ShardNames()),
		zap.String("pool_mode", cfg.Pool.Mode), zap.Int("pool_size", cfg.Pool.Size))
	started.Store(true)
	if onStart != nil {
		onStart(st)
	}

	err = px.Run(ctx)
	if adminSrv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if adminSrv.Shutdown(shutdownCtx) != nil {
			stopAdmin() // a backup or restore still running is cancelled
			_ = adminSrv.Close()
		}
		cancel()
	}
	stopCerts()
	<-certsDone
	stopMap()
	<-mapDone
	<-backupsDone
	<-dbmDone
	<-threadsDone
	log.Info("sidecar stopped")
	return err
}

func certReady(src brownietls.Source) func() error {
	return func() error {
		b, err := src.Current()
		if err != nil {
			return err
		}
		return b.ValidAt(time.Now())
	}
}

// certStatus is the "certificate" section of /status: the certificate in
// use (serial, validity, seconds to expiry) and the source's refresh state.
// It holds no key material.
func certStatus(src brownietls.Source) func() any {
	return func() any {
		st := src.Status()
		out := map[string]any{"source": st.Source, "generation": st.Generation, "rotations": st.Rotations,
			"refresh_failures": st.Failures}
		if st.LastError != "" {
			out["last_error"] = st.LastError
		}
		if !st.NextRefresh.IsZero() {
			out["next_refresh"] = st.NextRefresh.UTC()
		}
		b, err := src.Current()
		if err != nil {
			out["error"] = err.Error()
			return out
		}
		out["serial"] = b.Serial
		out["not_before"] = b.NotBefore.UTC()
		out["not_after"] = b.NotAfter.UTC()
		out["seconds_to_expiry"] = int64(time.Until(b.NotAfter).Seconds())
		if err := b.ValidAt(time.Now()); err != nil {
			out["error"] = err.Error()
		}
		return out
	}
}

// runThreads adapts the thread count (internal/threads) to how long the
// sidecar's goroutines wait for a thread while clients queue for pooled
// connections, until ctx ends. It starts from one thread and logs each
// change at debug level (go_sched_gomaxprocs_threads shows the count).
func runThreads(ctx context.Context, th Threads, px *proxy.Server, log *zap.Logger) {
	p := threads.DefaultPolicy(th.Max)
	if th.Policy != nil {
		p = *th.Policy
	}
	th.Set(p.Min)
	lat := threads.NewLatencies()
	waits := px.PoolWaits()
	next := func() threads.Window {
		w := lat.Next()
		n := px.PoolWaits()
		w.Queued = n > waits
		waits = n
		return w
	}
	threads.Run(ctx, p, next, func(n int) {
		th.Set(n)
		log.Debug("scheduler threads changed", zap.Int("threads", n))
	})
}
