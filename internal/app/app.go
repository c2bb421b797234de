// Package app wires the sidecar's components together for the
// brownie-sidecar binary. It receives everything from cmd (arguments,
// environment map, output streams, a context cancelled on SIGTERM/SIGINT)
// and never reads the process environment or exits by itself, so tests run
// the real binary's code in-process.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/brownie/brownie-sidecar/admin"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/proxy"
	"github.com/brownie/brownie-sidecar/router"
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

// IO is where a command writes.
type IO struct {
	Stdout, Stderr io.Writer
}

const usage = `usage: brownie-sidecar [command]

commands:
  run                     run the sidecar (default), configured from the environment
  dev [--reset]           run the embedded development stack (two shards, each a
                          primary and a replica) and the sidecar on 127.0.0.1:6432
  certs dev --out DIR     write a development CA, server and client certificates
  version                 print the version
`

// Main runs the command named by args (args[0] is the program name) and
// returns the process exit code. ctx is cancelled to request a graceful
// shutdown.
func Main(ctx context.Context, args []string, environ map[string]string, out IO) int {
	cmd, rest := "run", []string(nil)
	if len(args) > 1 {
		cmd, rest = args[1], args[2:]
	}
	switch cmd {
	case "run":
		return runCommand(ctx, environ, out, nil)
	case "dev":
		return devCommand(ctx, rest, environ, out)
	case "certs":
		return certsCommand(rest, environ, out)
	case "version", "--version":
		fmt.Fprintln(out.Stdout, "brownie-sidecar", Version)
		return ExitOK
	case "help", "-h", "--help":
		fmt.Fprint(out.Stdout, usage)
		return ExitOK
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
	if err := Run(ctx, cfg, log, onStart); err != nil {
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
func Run(ctx context.Context, cfg config.Config, log *zap.Logger, onStart func(Started)) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)

	certs, err := newCertSource(cfg, log.Named("certs"))
	if err != nil {
		return fmt.Errorf("upstream client certificate: %w", err)
	}
	reg.MustRegister(newCertCollector(certs))

	rt, err := router.New(&router.Map{Shards: []router.Shard{{
		Name:    "shard-0",
		Primary: router.Host{Addr: net.JoinHostPort(cfg.DB.Host, strconv.Itoa(cfg.DB.Port)), ServerName: cfg.DB.ServerName},
	}}})
	if err != nil {
		return err
	}
	px, err := proxy.New(proxy.Config{
		Listen: cfg.Listen, Pool: cfg.Pool, Database: cfg.DB.Name, User: cfg.DB.User,
		SSLMode: cfg.DB.SSLMode, ConnectTimeout: cfg.DB.ConnectTimeout, ShutdownTimeout: cfg.ShutdownTimeout,
	}, proxy.Deps{Log: log.Named("proxy"), Certs: certs, Router: rt, Metrics: m})
	if err != nil {
		return err
	}
	reg.MustRegister(px.Collector())
	if err := px.Listen(); err != nil {
		return err
	}

	var adminLn net.Listener
	var adminSrv *http.Server
	if cfg.Admin.Enabled() {
		adminLn, err = net.Listen("tcp", cfg.Admin.Addr)
		if err != nil {
			px.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
		h := admin.New(admin.Deps{Log: log.Named("admin"), Gatherer: reg, Pprof: cfg.Admin.Pprof, Checks: []admin.Check{
			{Name: "proxy", Ready: px.Ready},
			{Name: "certificate", Ready: certReady(certs)},
		}})
		adminSrv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := adminSrv.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server failed", zap.Error(err))
			}
		}()
	}

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
		zap.Stringer("admin", st.AdminAddr), zap.String("upstream", rt.Map().Shards[0].Primary.Addr),
		zap.String("pool_mode", cfg.Pool.Mode), zap.Int("pool_size", cfg.Pool.Size))
	if onStart != nil {
		onStart(st)
	}

	err = px.Run(ctx)
	if adminSrv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = adminSrv.Shutdown(shutdownCtx)
		cancel()
	}
	stopCerts()
	<-certsDone
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
