# Brownie DB sidecar. `make dev` and `make test` install what they need on a
# fresh Debian machine with Go (Postgres server binaries, PgBouncer, psql).

GO        ?= go
BIN       := bin/brownie-sidecar
PG_BINDIR := $(firstword $(wildcard /usr/lib/postgresql/*/bin))
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/brownie/brownie-sidecar/internal/app.Version=$(VERSION)
# Packages with goroutines of their own run under the race detector; the
# rest run without it.
RACE_PKGS := ./pool/... ./proxy/... ./tls/... ./internal/app/... ./internal/vaulttest/...
RACE_RE   := /(pool|proxy|tls|internal/app|internal/vaulttest)$$
FUZZTIME  ?= 10s

.PHONY: all build dev test test-unit test-race fuzz lint bench deps deps-bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/brownie-sidecar

# deps installs the Postgres server and client tools the tests and the dev
# stack run (initdb, pg_ctl, pg_basebackup, psql, pgbench), plus the Python
# drivers used by driver-compatibility tests.
deps:
	@if [ -z "$(PG_BINDIR)" ] || ! command -v psql >/dev/null || ! /usr/bin/python3 -c 'import psycopg' 2>/dev/null; then \
		echo "installing PostgreSQL and psycopg 3"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib postgresql-client python3-psycopg >/dev/null; \
	fi

deps-bench: deps
	@command -v pgbouncer >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }

dev: deps build
	./$(BIN) dev $(DEV_ARGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# test runs everything: lint, the whole suite with race detection on the
# concurrent packages, and short fuzz runs over the committed corpora.
test: deps lint
	$(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -Ev '$(RACE_RE)')
	$(GO) test -count=1 -race -timeout 15m $(RACE_PKGS)
	$(MAKE) fuzz FUZZTIME=5s

fuzz:
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzParseStartup$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME)
	$(GO) test ./router -run '^$$' -fuzz '^FuzzKeyExtraction$$' -fuzztime $(FUZZTIME)

bench: deps-bench build
	$(GO) run ./internal/bench

clean:
	rm -rf bin .bench
