// Command brownie-sidecar is the Brownie DB sidecar: a Postgres-wire
// gateway and connection pooler that authenticates upstream with client
// certificates. This file is the only place that reads the process
// environment, handles signals or exits; everything else is internal/app.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/brownie/brownie-sidecar/internal/app"
)

func main() {
	// A sidecar serves one pod's connections. Like PgBouncer's one
	// thread, one scheduler thread spends the least CPU per transaction:
	// with more, every message a goroutine waits for wakes another thread
	// (README, Cost per pod). GOMAXPROCS in the environment overrides it.
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		runtime.GOMAXPROCS(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := app.Main(ctx, os.Args, environ(), app.IO{Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}

func environ() map[string]string {
	env := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}
