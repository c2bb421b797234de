package app

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/brownie/brownie-sidecar/deploy/shardmap"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// devShard is one shard of the development stack.
type devShard struct {
	name             string
	primary, replica *pgcluster.Cluster
}

// devOptions are the dev command's flags.
type devOptions struct {
	dir, listen, adminAddr string
	reset, syncRepl        bool
	basePort               int
}

// devFlags returns the dev command's flag set, writing into the options.
func devFlags() (*flag.FlagSet, *devOptions) {
	o := &devOptions{}
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", ".dev", "directory holding the development stack")
	fs.BoolVar(&o.reset, "reset", false, "delete the development stack and start over")
	fs.IntVar(&o.basePort, "base-port", 15432, "first Postgres port: shard N uses base+10N (primary) and base+10N+1 (replica)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:6432", "sidecar listen address")
	fs.BoolVar(&o.syncRepl, "sync-replication", false, "make each shard's replica a synchronous standby of its primary (synchronous_standby_names, synchronous_commit = on) and mark the shards synchronous in the shard map: no acknowledged write is lost when a replica is promoted; a stopped replica stops commits on its primary until it returns")
	fs.StringVar(&o.adminAddr, "admin", "127.0.0.1:8001", "admin HTTP address")
	return fs, o
}

// devCommand runs the embedded development stack: dev certificates, two
// shards of a primary and a streaming replica each (cert-only pg_hba), the
// Brownie schema on every shard, and the sidecar on 127.0.0.1:6432 with the
// admin port on 127.0.0.1:8001. Everything lives under --dir (default
// .dev) and is reused by the next run; --reset starts over.
func devCommand(ctx context.Context, args []string, environ map[string]string, out IO) int {
	fs, o := devFlags()
	fs.SetOutput(out.Stderr)
	dir, reset, basePort, listen, adminAddr, syncRepl := &o.dir, &o.reset, &o.basePort, &o.listen, &o.adminAddr, &o.syncRepl
	if err := fs.Parse(args); err != nil {
		return ExitConfig
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintln(out.Stderr, "dev:", err)
		return ExitFail
	}
	shards, err := startDevStack(ctx, abs, *reset, *basePort, *syncRepl, out.Stderr)
	defer stopDevStack(shards, out.Stderr)
	if err != nil {
		fmt.Fprintln(out.Stderr, "dev:", err)
		return ExitFail
	}

	ports := make([][2]int, len(shards))
	for i, sh := range shards {
		ports[i] = [2]int{sh.primary.Port(), sh.replica.Port()}
	}
	mapFile, err := writeDevShardMap(abs, ports, *syncRepl, out.Stderr)
	if err != nil {
		fmt.Fprintln(out.Stderr, "dev:", err)
		return ExitFail
	}
	env := map[string]string{
		"SHARD_MAP_FILE":    mapFile,
		"DB_HOST":           "localhost",
		"DB_PORT":           strconv.Itoa(shards[0].primary.Port()),
		"LOCAL_CERT_DIR":    filepath.Join(abs, "certs"),
		"LISTEN_ADDR":       *listen,
		"LISTEN_SOCKET_DIR": filepath.Join(abs, "run"),
		"ADMIN_ADDR":        *adminAddr,
		"LOG_FORMAT":        "console",
		"SHUTDOWN_TIMEOUT":  "5s",
	}
	maps.Copy(env, environ) // the caller's environment wins
	if err := os.MkdirAll(env["LISTEN_SOCKET_DIR"], 0o755); err != nil {
		fmt.Fprintln(out.Stderr, "dev:", err)
		return ExitFail
	}
	return runCommand(ctx, env, out, func(st Started) {
		fmt.Fprintf(out.Stdout, "\nBrownie dev stack is up.\n")
		repl := "asynchronous"
		if *syncRepl {
			repl = "synchronous"
		}
		for _, s := range shards {
			fmt.Fprintf(out.Stdout, "  %s: primary 127.0.0.1:%d, replica 127.0.0.1:%d (%s)\n", s.name, s.primary.Port(), s.replica.Port(), repl)
		}
		fmt.Fprintf(out.Stdout, "  sidecar: %s (unix socket in %s), admin http://%s\n", *listen, env["LISTEN_SOCKET_DIR"], *adminAddr)
		_, port, _ := splitPort(*listen)
		fmt.Fprintf(out.Stdout, "\nConnect with:\n  psql \"host=127.0.0.1 port=%s dbname=brownie_metadata user=brownie-fastapi-server\"\n\nPress Ctrl-C to stop.\n\n", port)
	})
}

func splitPort(addr string) (string, string, error) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i], addr[i+1:], nil
		}
	}
	return addr, "", fmt.Errorf("no port in %q", addr)
}

// writeDevShardMap writes .dev/shardmap.yaml: the Brownie shard map of
// deploy/shardmap with the addresses of this stack's servers (ports holds
// each shard's primary and replica port), which differ from the file's when
// --base-port is not the default. An existing file is kept (edit it to try
// overrides; the sidecar reloads it) unless it lacks one of the stack's
// addresses, as after a run with another --base-port, or disagrees with
// sync (the shards' synchronous flag): then it is moved to
// shardmap.yaml.old, said on log, and written afresh.
func writeDevShardMap(dir string, ports [][2]int, sync bool, log io.Writer) (string, error) {
	path := filepath.Join(dir, "shardmap.yaml")
	addr := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	if old, err := os.ReadFile(path); err == nil {
		stale := bytes.Contains(old, []byte(devSyncLine)) != sync
		for _, p := range ports {
			stale = stale || !bytes.Contains(old, []byte(addr(p[0]))) || !bytes.Contains(old, []byte(addr(p[1])))
		}
		if !stale {
			return path, nil
		}
		if err := os.Rename(path, path+".old"); err != nil {
			return "", err
		}
		fmt.Fprintf(log, "dev: %s named servers of another stack (another --base-port?); kept it as %s.old and wrote a new one\n", path, path)
	}
	text := string(shardmap.Brownie)
	for i, p := range ports {
		text = strings.ReplaceAll(text, addr(15432+10*i), fmt.Sprintf("\x00%d", p[0]))
		text = strings.ReplaceAll(text, addr(15433+10*i), fmt.Sprintf("\x00%d", p[1]))
	}
	text = strings.ReplaceAll(text, "\x00", "127.0.0.1:")
	if sync {
		var b strings.Builder
		for line := range strings.Lines(text) {
			b.WriteString(line)
			if strings.HasPrefix(line, "    replicas: [") {
				b.WriteString(devSyncLine + "\n")
			}
		}
		text = b.String()
	}
	return path, os.WriteFile(path, []byte(text), 0o644)
}

// devSyncLine marks a shard of the development map synchronous.
const devSyncLine = "    synchronous: true"

// startDevStack creates (or reuses) and starts both shards. On error the
// shards started so far are returned so the caller can stop them.
func startDevStack(ctx context.Context, dir string, reset bool, basePort int, sync bool, log io.Writer) ([]devShard, error) {
	stopExisting(ctx, dir, log)
	if reset {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	_ = os.Chmod(dir, 0o755)
	certDir := filepath.Join(dir, "certs")
	if _, err := os.Stat(filepath.Join(certDir, "ca.key")); err != nil {
		fmt.Fprintln(log, "dev: writing development certificates to", certDir)
		if err := brownietls.WriteDevCerts(certDir, pgcluster.BrownieRole); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var shards []devShard
	for i := range 2 {
		name := fmt.Sprintf("shard-%d", i)
		base := pgcluster.Config{
			ServerCert: filepath.Join(certDir, "server.crt"),
			ServerKey:  filepath.Join(certDir, "server.key"),
			CACert:     filepath.Join(certDir, "ca.crt"),
		}
		pcfg := base
		pcfg.Dir, pcfg.Port = filepath.Join(dir, name, "primary"), basePort+10*i
		fmt.Fprintf(log, "dev: starting %s primary on 127.0.0.1:%d\n", name, pcfg.Port)
		primary, err := pgcluster.Create(ctx, pcfg)
		if err != nil {
			return shards, fmt.Errorf("%s primary: %w", name, err)
		}
		sh := devShard{name: name, primary: primary}
		if err := primary.Start(ctx); err != nil {
			return shards, fmt.Errorf("%s primary: %w", name, err)
		}
		shards = append(shards, sh)
		if err := primary.EnsureBrownieDatabase(ctx); err != nil {
			return shards, fmt.Errorf("%s schema: %w", name, err)
		}
		rcfg := base
		rcfg.Dir, rcfg.Port, rcfg.PrimaryOf = filepath.Join(dir, name, "replica"), basePort+10*i+1, primary
		fmt.Fprintf(log, "dev: starting %s replica on 127.0.0.1:%d\n", name, rcfg.Port)
		replica, err := pgcluster.Create(ctx, rcfg)
		if err != nil {
			return shards, fmt.Errorf("%s replica: %w", name, err)
		}
		if err := replica.Start(ctx); err != nil {
			return shards, fmt.Errorf("%s replica: %w", name, err)
		}
		shards[len(shards)-1].replica = replica
		if sync {
			fmt.Fprintf(log, "dev: %s replica is a synchronous standby (synchronous_commit = on)\n", name)
			err = primary.MakeSynchronous(ctx, pgcluster.StandbyName(rcfg.Dir))
		} else {
			err = primary.MakeAsynchronous(ctx)
		}
		if err != nil {
			return shards, fmt.Errorf("%s replication: %w", name, err)
		}
	}
	return shards, nil
}

// stopExisting stops servers a previous run may have left behind before
// their files are deleted.
func stopExisting(ctx context.Context, dir string, log io.Writer) {
	for i := range 2 {
		for _, role := range []string{"replica", "primary"} {
			home := filepath.Join(dir, fmt.Sprintf("shard-%d", i), role)
			if _, err := os.Stat(filepath.Join(home, "data", "PG_VERSION")); err != nil {
				continue
			}
			if err := pgcluster.StopDir(ctx, home, log); err != nil {
				fmt.Fprintln(log, "dev: stopping", home, ":", err)
			}
		}
	}
}

// stopDevStack stops replicas first, then primaries.
func stopDevStack(shards []devShard, log io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, s := range shards {
		if s.replica != nil {
			if err := s.replica.Stop(ctx); err != nil {
				fmt.Fprintln(log, "dev: stop", s.name, "replica:", err)
			}
		}
	}
	for _, s := range shards {
		if err := s.primary.Stop(ctx); err != nil {
			fmt.Fprintln(log, "dev: stop", s.name, "primary:", err)
		}
	}
	if len(shards) > 0 {
		fmt.Fprintln(log, "dev: development stack stopped")
	}
}
