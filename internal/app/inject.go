package app

import (
	"context"
	cryptotls "crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/inject"
	"github.com/brownie/brownie-sidecar/internal/config"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// InjectStarted describes a running injector, for tests.
type InjectStarted struct {
	// Addr is the webhook's HTTPS address, AdminAddr the plain HTTP one
	// of /health, /ready and /metrics (nil when off).
	Addr, AdminAddr net.Addr
}

// injectCommand implements `inject`: the sidecar injector webhook,
// configured from the environment (INJECT_*), until ctx ends.
func injectCommand(ctx context.Context, args []string, environ map[string]string, out IO) int {
	return runInject(ctx, args, environ, out, nil)
}

func runInject(ctx context.Context, args []string, environ map[string]string, out IO, onStart func(InjectStarted)) int {
	if len(args) > 0 {
		fmt.Fprintf(out.Stderr, "inject: unexpected argument %q (the injector is configured with INJECT_* variables)\n", args[0])
		return ExitConfig
	}
	cfg, err := config.LoadInject(environ)
	if err != nil {
		fmt.Fprintln(out.Stderr, err)
		return ExitConfig
	}
	log, err := newLogger(config.Config{LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat}, out.Stderr)
	if err != nil {
		fmt.Fprintln(out.Stderr, err)
		return ExitConfig
	}
	defer log.Sync()
	log = log.Named("injector")
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	in, err := inject.New(cfg, inject.Deps{Log: log, Registerer: reg})
	if err != nil {
		fmt.Fprintln(out.Stderr, err)
		return ExitConfig
	}
	if err := serveInjector(ctx, cfg, in, reg, log, onStart); err != nil {
		log.Error("injector failed", zap.Error(err))
		return ExitFail
	}
	return ExitOK
}

// serveInjector serves reviews over TLS with the certificate of
// cfg.TLSDir, reloaded when its files change (a renewed Secret is
// presented from the next handshake on), and the admin endpoints, until
// ctx ends; then it drains in-flight reviews within cfg.ShutdownTimeout.
func serveInjector(ctx context.Context, cfg config.Inject, in *inject.Injector, reg *prometheus.Registry,
	log *zap.Logger, onStart func(InjectStarted)) error {
	certs, err := brownietls.NewFileSource(brownietls.FileConfig{Dir: cfg.TLSDir, CertFile: "tls.crt", KeyFile: "tls.key", NoCA: true},
		log.Named("certs"))
	if err != nil {
		return fmt.Errorf("webhook certificate: %w", err)
	}
	reg.MustRegister(newCertCollector(certs))
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("webhook listener: %w", err)
	}
	srv := &http.Server{
		Handler:           inject.Handler(in),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		TLSConfig:         &cryptotls.Config{MinVersion: cryptotls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	var adminLn net.Listener
	var adminSrv *http.Server
	if cfg.AdminAddr != config.AdminOff {
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
		adminSrv = &http.Server{Handler: injectorAdmin(certs, reg, log), ReadHeaderTimeout: 5 * time.Second}
	}

	certCtx, stopCerts := context.WithCancel(context.Background())
	certsDone := make(chan struct{})
	go func() {
		defer close(certsDone)
		_ = certs.Run(certCtx) // failures are logged and kept in Status
	}()
	served := make(chan error, 2)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	if adminSrv != nil {
		go func() { served <- adminSrv.Serve(adminLn) }()
	}
	st := InjectStarted{Addr: ln.Addr()}
	if adminLn != nil {
		st.AdminAddr = adminLn.Addr()
	}
	log.Info("injector started", zap.String("version", Version), zap.Stringer("listen", st.Addr),
		zap.Stringer("admin", st.AdminAddr), zap.String("image", cfg.Image), zap.String("cert_mode", cfg.CertMode))
	if onStart != nil {
		onStart(st)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-served:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	if adminSrv != nil {
		if err := adminSrv.Shutdown(shutdownCtx); err != nil {
			_ = adminSrv.Close()
		}
	}
	stopCerts()
	<-certsDone
	log.Info("injector stopped")
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) {
		return runErr
	}
	return nil
}

// injectorAdmin serves the injector's probes and metrics: /health is 200
// while the process serves HTTP, /ready is 200 while the webhook
// certificate is valid, /metrics is Prometheus text.
func injectorAdmin(certs brownietls.Source, reg *prometheus.Registry, log *zap.Logger) http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	ready := certReady(certs)
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "certificate": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log)}))
	return mux
}
