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
	"github.com/brownie/brownie-sidecar/internal/threads"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	// A sidecar serves one pod's connections. Like PgBouncer's one
	// thread, one scheduler thread spends the least CPU per transaction
	// while it keeps up; when goroutines wait for it, a second one (up to
	// the runtime's own default) shortens each pooled connection's
	// turnaround (README, Cost per pod). GOMAXPROCS in the environment
	// fixes the count instead.
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		most := runtime.GOMAXPROCS(1)
		go threads.Run(ctx, threads.DefaultPolicy(most), threads.NewLatencies().Next, func(n int) { runtime.GOMAXPROCS(n) })
	}
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
