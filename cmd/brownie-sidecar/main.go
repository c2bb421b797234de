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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	out := app.IO{Stdout: os.Stdout, Stderr: os.Stderr}
	// A sidecar serves one pod's connections. Like PgBouncer's one
	// thread, one scheduler thread spends the least CPU per transaction
	// while it keeps up; while clients queue for pooled connections and
	// goroutines wait for the thread, the sidecar adds threads, up to the
	// runtime's own default (README, Configuration). GOMAXPROCS in the
	// environment fixes the count instead.
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		most := runtime.GOMAXPROCS(1)
		out.Threads = app.Threads{Max: most, Set: func(n int) { runtime.GOMAXPROCS(n) }}
	}
	code := app.Main(ctx, os.Args, environ(), out)
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
