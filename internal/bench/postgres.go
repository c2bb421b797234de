package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// markerName marks a directory as this program's work directory, which it
// may delete.
const markerName = ".brownie-bench"

// prepareDir recreates the work directory: it stops the clusters an
// earlier, killed run may have left running (the database and the sharded
// table's shards), deletes the directory (only if it is empty or carries
// the marker) and writes fresh development certificates.
func (b *bench) prepareDir(ctx context.Context) error {
	for _, name := range []string{"pg", "shard-0", "shard-1"} {
		pgDir := filepath.Join(b.dir, name)
		if isFile(filepath.Join(pgDir, "data", "PG_VERSION")) {
			if err := pgcluster.StopDir(ctx, pgDir, io.Discard); err != nil {
				return fmt.Errorf("stop the cluster an earlier run left in %s: %w", pgDir, err)
			}
		}
	}
	entries, err := os.ReadDir(b.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case len(entries) > 0 && !isFile(filepath.Join(b.dir, markerName)):
		return fmt.Errorf("refusing to delete %s: it is not empty and was not made by this program", b.dir)
	default:
		if err := os.RemoveAll(b.dir); err != nil {
			return err
		}
	}
	// The postgres OS user must be able to traverse the work directory.
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(b.dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, markerName), nil, 0o644); err != nil {
		return err
	}
	if b.cmdLog, err = os.Create(filepath.Join(b.dir, "commands.log")); err != nil {
		return err
	}
	b.certDir = filepath.Join(b.dir, "certs")
	if err := brownietls.WriteDevCerts(b.certDir, pgcluster.BrownieRole); err != nil {
		return fmt.Errorf("write dev certificates: %w", err)
	}
	b.logf("work directory %s", b.dir)
	return nil
}

// startPostgres creates and starts the primary with the given extra
// settings. The first call registers the cleanup that stops it.
func (b *bench) startPostgres(ctx context.Context, settings map[string]string) error {
	cfg := pgcluster.Config{
		Dir:        filepath.Join(b.dir, "pg"),
		ServerCert: filepath.Join(b.certDir, "server.crt"),
		ServerKey:  filepath.Join(b.certDir, "server.key"),
		CACert:     filepath.Join(b.certDir, "ca.crt"),
		Settings:   settings,
		BinDir:     b.binDir,
		Log:        b.cmdLog,
	}
	if b.pg != nil {
		cfg.Port = b.pg.Port()
	}
	c, err := pgcluster.Create(ctx, cfg)
	if err != nil {
		return fmt.Errorf("create postgres: %w", err)
	}
	if b.pg == nil {
		b.onCleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := b.pg.Stop(ctx); err != nil {
				b.logf("stop postgres: %v", err)
			}
		})
	}
	b.pg = c
	b.logf("starting postgres on 127.0.0.1:%d (%s)", c.Port(), formatSettings(settings))
	if err := c.Start(ctx); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	return nil
}

// restartPostgres stops the primary and starts it again, on the same port
// and data, with new settings.
func (b *bench) restartPostgres(ctx context.Context, settings map[string]string) error {
	if err := b.pg.Stop(ctx); err != nil {
		return fmt.Errorf("stop postgres: %w", err)
	}
	return b.startPostgres(ctx, settings)
}

func formatSettings(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, " ")
}

// initPgbench creates the Brownie database and role, fills it with the
// pgbench tables as the superuser over the Unix socket, and lets the
// Brownie role read and update them.
func (b *bench) initPgbench(ctx context.Context) error {
	if err := b.pg.EnsureBrownieDatabase(ctx); err != nil {
		return err
	}
	b.logf("pgbench -i -s %d in %s", b.opts.scale, pgcluster.BrownieDatabase)
	cmd := exec.CommandContext(ctx, b.pgbench, "-i", "-s", strconv.Itoa(b.opts.scale), "-q",
		"-h", b.pg.SocketDir(), "-p", strconv.Itoa(b.pg.Port()), "-U", "postgres", pgcluster.BrownieDatabase)
	cmd.Env = cleanEnv("", nil)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Fprintf(b.cmdLog, "$ %s\n%s", strings.Join(cmd.Args, " "), out.Bytes())
	if err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, strings.TrimSpace(out.String()))
	}
	_, err = b.pg.Exec(ctx, pgcluster.BrownieDatabase,
		`GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO "brownie-fastapi-server"`)
	return err
}

// versions describes what is being compared, for the report header.
func (b *bench) versions(ctx context.Context) []string {
	first := func(path string, args ...string) string {
		out, err := exec.CommandContext(ctx, path, args...).Output()
		if err != nil {
			return "unknown (" + err.Error() + ")"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	pg, err := b.pg.Exec(ctx, "postgres", "SHOW server_version")
	if err != nil {
		pg = "unknown"
	}
	if !usesPgbench(b.opts.modes) {
		return []string{"PostgreSQL " + pg, first(b.sidecar, "version")}
	}
	return []string{
		"PostgreSQL " + pg,
		first(b.bouncer, "--version"),
		first(b.sidecar, "version"),
		first(b.pgbench, "--version"),
	}
}
