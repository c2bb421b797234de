# Brownie DB sidecar. `make dev` and `make test` install what they need on a
# fresh Debian machine with Go (Postgres server binaries, PgBouncer, psql).

GO        ?= go
BIN       := bin/brownie-sidecar
# The backup worker ships beside the sidecar, which starts it for each
# backup, restore and listing (see README "Backups").
WORKER    := bin/brownie-backup
PG_BINDIR := $(firstword $(wildcard /usr/lib/postgresql/*/bin))
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/brownie/brownie-sidecar/internal/app.Version=$(VERSION)
# The sidecar is linked statically: glibc's libc.a for the Postgres
# parser's C code, Go's own DNS resolver and user lookup (netgo, osusergo).
# It runs in any image, an empty one included, and a pod maps only the libc
# code the parser calls instead of libc.so's pages (README "Memory").
STATIC    := -linkmode external -extldflags -static
TAGS      := netgo,osusergo
# Packages with goroutines of their own run under the race detector; the
# rest run without it.
RACE_PKGS := ./pool/... ./proxy/... ./fanout/... ./health/... ./twophase/... ./tls/... ./backup/... ./dbmetrics/... ./internal/app/... ./internal/vaulttest/... ./internal/netx/... ./internal/faultnet/...
RACE_RE   := /(pool|proxy|fanout|health|twophase|tls|backup|dbmetrics|internal/app|internal/vaulttest|internal/netx|internal/faultnet)$$
# FUZZTIME bounds each `make fuzz` target: a duration, or a count of
# executions (`50000x`). `make test` gives a count: with a duration, Go 1.26's
# fuzzing coordinator can end a run that found nothing with "context
# deadline exceeded" (golang/go#75804, fixed in Go 1.27); a count sets no
# deadline.
FUZZTIME  ?= 10s
# BENCH_ARGS are internal/bench's flags (see its doc.go); -reference adds
# a second PgBouncer to each table and to the memory measurements (the
# noise of a ratio) and the minimal Go relays to the session and
# transaction tables (the ceiling of a Go proxy); -repeat 3 makes every
# figure the median of three rounds.
BENCH_ARGS ?= -reference -repeat 3

.PHONY: all build dev test test-unit test-race test-conformance fuzz lint bench bench-backup chaos deps deps-bench deps-backup deps-monitoring clean generate

all: build

build:
	$(GO) build -trimpath -tags $(TAGS) -ldflags '$(LDFLAGS) $(STATIC)' -o $(BIN) ./cmd/brownie-sidecar
	$(GO) build -trimpath -o $(WORKER) ./cmd/brownie-backup

# deps installs the Postgres server and client tools the tests and the dev
# stack run (initdb, pg_ctl, pg_basebackup, psql, pgbench), plus the Python
# drivers and tools of the driver-compatibility tests: psycopg 3, psycopg2,
# SQLAlchemy and Alembic (the API replay and Alembic tests), and gdb, with
# which a fault test stops a Postgres backend at a chosen point.
deps:
	@if [ -z "$(PG_BINDIR)" ] || ! command -v psql >/dev/null || ! command -v gdb >/dev/null || ! /usr/bin/python3 -c 'import psycopg, psycopg2, sqlalchemy, alembic' 2>/dev/null; then \
		echo "installing PostgreSQL, psycopg 3, psycopg2, SQLAlchemy, Alembic and gdb"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib postgresql-client python3-psycopg python3-psycopg2 python3-sqlalchemy python3-alembic gdb >/dev/null; \
	fi

# deps-backup installs the storage servers the backup tests run against:
# versitygw (S3, posix backend) and fake-gcs-server with `go install` into
# $(GOBIN_DIR), Azurite's blob service with npm. Each is reinstalled only
# when missing or of another version.
VERSITYGW_VERSION := v1.8.0
FAKE_GCS_VERSION  := v1.56.1
AZURITE_VERSION   := 3.37.0
GOBIN_DIR         := $(or $(shell $(GO) env GOBIN),$(firstword $(subst :, ,$(shell $(GO) env GOPATH)))/bin)

deps-backup:
	@$(GO) version -m $(GOBIN_DIR)/versitygw 2>/dev/null | grep -q 'mod.*github.com/versity/versitygw.*$(VERSITYGW_VERSION)' || { \
		echo "installing versitygw $(VERSITYGW_VERSION)"; \
		$(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION); }
	@$(GO) version -m $(GOBIN_DIR)/fake-gcs-server 2>/dev/null | grep -q 'mod.*github.com/fsouza/fake-gcs-server.*$(FAKE_GCS_VERSION)' || { \
		echo "installing fake-gcs-server $(FAKE_GCS_VERSION)"; \
		$(GO) install github.com/fsouza/fake-gcs-server@$(FAKE_GCS_VERSION); }
	@[ "$$(azurite-blob --version 2>/dev/null)" = "$(AZURITE_VERSION)" ] || { \
		command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }; \
		echo "installing azurite $(AZURITE_VERSION)"; \
		npm install -g --no-fund --no-audit --loglevel=error azurite@$(AZURITE_VERSION); }

# deps-monitoring installs Prometheus (prometheus, promtool) and
# Alertmanager (amtool) from Debian: the monitoring tests check the rules
# and their unit tests with promtool, the Alertmanager configuration with
# amtool, and run a real Prometheus against a sidecar.
deps-monitoring:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null || { \
		echo "installing prometheus and prometheus-alertmanager"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }

deps-bench: deps
	@command -v pgbouncer >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
	@command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }

dev: deps build
	./$(BIN) dev $(DEV_ARGS)

# generate refreshes the generated deployment files: the Helm chart's copies
# of the rules, dashboards, SQL and Postgres settings, and the kustomize base
# rendered from the chart (a test fails when they are stale).
generate:
	$(GO) generate ./deploy

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# test runs everything: lint, the shipped build (which must link and run),
# the whole suite with race detection on the concurrent packages, and short
# fuzz runs over the committed corpora.
test: deps deps-backup deps-monitoring lint build
	./$(BIN) version
	$(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -Ev '$(RACE_RE)')
	$(GO) test -count=1 -race -timeout 15m $(RACE_PKGS)
	$(MAKE) test-conformance
	$(MAKE) fuzz FUZZTIME=50000x

# test-conformance runs pgx's own test suite (the version in go.mod, from
# the module cache) through the sidecar in session and in transaction
# mode against a real cert-only Postgres, and compares its failing tests
# with internal/conformance/testdata/pgx-expected-failures.txt: a new
# failure fails, and so does a listed test that passes. About 5 minutes.
test-conformance: deps
	$(GO) test -count=1 -timeout 25m ./internal/conformance -run '^TestPgxSuiteThroughSidecar$$' -conformance -v

fuzz:
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzParseStartup$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME)
	$(GO) test ./router -run '^$$' -fuzz '^FuzzKeyExtraction$$' -fuzztime $(FUZZTIME)

bench: deps-bench build
	$(GO) run ./internal/bench $(BENCH_ARGS)
	$(MAKE) bench-backup

# chaos runs the failover scenario (internal/chaos) twice on fresh
# stacks under .chaos: with asynchronous replicas, then with synchronous
# ones. Each run takes about 45 s; the markdown reports are
# .chaos/chaos-async.md and .chaos/chaos-sync.md.
chaos: deps build
	$(GO) run ./internal/chaos -dir .chaos/async -out .chaos/chaos-async.md
	$(GO) run ./internal/chaos -dir .chaos/sync -out .chaos/chaos-sync.md -sync-replication

# bench-backup backs up and restores a generated Brownie dataset of
# BACKUP_BENCH_MB megabytes (default 1024) spread over two shards to local
# storage, and reports throughput and restore time against the original
# product's promise of a local restore under 5 minutes. Try it small first:
# make bench-backup BACKUP_BENCH_MB=50
BACKUP_BENCH_MB ?= 1024
bench-backup: deps
	BACKUP_BENCH_MB=$(BACKUP_BENCH_MB) $(GO) test ./backup -run '^$$' -bench '^BenchmarkBackupRestore$$' -benchtime 1x -count 1 -timeout 60m -v

clean:
	rm -rf bin .bench .chaos
