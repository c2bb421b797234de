package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes one cluster. The zero value is not valid: Dir and the
// three certificate paths are required.
type Config struct {
	// Dir is the cluster home. The data directory is Dir/data, the Unix
	// socket directory Dir/run and the server log Dir/postgres.log. It is
	// created if missing; when running as root every directory above it must
	// be traversable by the OS user postgres.
	Dir string
	// Port is the loopback TCP port; 0 picks a free one on every Create.
	Port int
	// ServerCert, ServerKey and CACert are PEM file paths. They are copied
	// into the data directory (owned by the server user, key mode 0600) and
	// configured as ssl_cert_file, ssl_key_file and ssl_ca_file with ssl=on.
	// CACert is what client certificates are verified against.
	ServerCert, ServerKey, CACert string
	// PrimaryOf, when non-nil, makes a new cluster a streaming replica of that
	// (running) primary: the data directory is copied with
	// pg_basebackup -R -X stream over the primary's Unix socket.
	PrimaryOf *Cluster
	// Settings are extra postgresql.conf settings; they override the
	// package's defaults.
	Settings map[string]string
	// BinDir holds the PostgreSQL server binaries; empty means FindBinDir().
	BinDir string
	// Log, if non-nil, receives every command line the package runs with its
	// output. Writes are serialized by the Cluster.
	Log io.Writer
}

// Cluster is one PostgreSQL cluster on disk and, once started, its server.
//
// Its methods may be called from several goroutines, but lifecycle calls
// (Start, Stop, Kill, Promote) must not race with each other; Exec and
// WaitReplayed are safe to run concurrently with anything.
type Cluster struct {
	cfg       Config
	binDir    string
	psql      string
	port      int
	dir       string
	dataDir   string
	socketDir string
	logPath   string
	owner     *serverUser // nil unless the process runs as root

	logMu sync.Mutex
}

// serverUser is the OS user server commands run as when the process is root.
type serverUser struct {
	uid, gid int
	home     string
}

// Host is the loopback address every cluster listens on.
const Host = "127.0.0.1"

// maxSocketPath is the longest Unix socket path PostgreSQL accepts
// (UNIXSOCK_PATH_BUFLEN minus the terminating NUL).
const maxSocketPath = 107

// binDirGlobs are where distributions install the server binaries: Debian
// and Ubuntu, then the PGDG RPMs.
var binDirGlobs = []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"}

// FindBinDir returns the newest PostgreSQL server binary directory installed
// on this machine (one that contains initdb). Its error tells how to install
// PostgreSQL when none is found.
func FindBinDir() (string, error) {
	type candidate struct {
		dir string
		ver []int
	}
	var found []candidate
	for _, g := range binDirGlobs {
		matches, _ := filepath.Glob(g) // The patterns are constant and valid.
		for _, m := range matches {
			if fi, err := os.Stat(filepath.Join(m, "initdb")); err != nil || fi.IsDir() {
				continue
			}
			found = append(found, candidate{dir: m, ver: parseVersion(filepath.Base(filepath.Dir(m)))})
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("pgcluster: no PostgreSQL server binaries found in %s; install them with `apt-get install postgresql`",
			strings.Join(binDirGlobs, " or "))
	}
	sort.SliceStable(found, func(i, j int) bool { return compareVersions(found[i].ver, found[j].ver) > 0 })
	return found[0].dir, nil
}

// parseVersion extracts "15" or "9.6" from a directory name such as "15" or
// "pgsql-9.6".
func parseVersion(name string) []int {
	name = strings.TrimLeft(name, "abcdefghijklmnopqrstuvwxyz-_")
	var v []int
	for _, part := range strings.Split(name, ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}

func compareVersions(a, b []int) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] - b[i]
		}
	}
	return len(a) - len(b)
}

// Create prepares the cluster in cfg.Dir without starting it. If
// Dir/data/PG_VERSION is missing it runs initdb (or, for a replica,
// pg_basebackup from cfg.PrimaryOf, which must be running); otherwise it
// reuses the existing data. In both cases it rewrites the configuration the
// package manages (sidecar.conf, pg_hba.conf) and copies the certificates,
// so a changed port or certificate takes effect on the next Start.
//
// Create refuses to touch a cluster whose server is running.
func Create(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	binDir := cfg.BinDir
	if binDir == "" {
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	c := &Cluster{
		cfg:       cfg,
		binDir:    binDir,
		dir:       dir,
		dataDir:   filepath.Join(dir, "data"),
		socketDir: filepath.Join(dir, "run"),
		logPath:   filepath.Join(dir, "postgres.log"),
		port:      cfg.Port,
	}
	if c.psql, err = findPsql(binDir); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if c.owner, err = lookupServerUser(); err != nil {
			return nil, err
		}
	}
	if c.port == 0 {
		if c.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	if sock := filepath.Join(c.socketDir, ".s.PGSQL."+strconv.Itoa(c.port)); len(sock) > maxSocketPath {
		return nil, fmt.Errorf("pgcluster: socket path %s is longer than %d bytes; use a shorter Dir", sock, maxSocketPath)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.checkTraversable(dir); err != nil {
		return nil, err
	}
	if running, err := c.running(ctx); err != nil {
		return nil, err
	} else if running {
		return nil, fmt.Errorf("pgcluster: a server is already running in %s; stop it first (%s -D %s stop)",
			c.dataDir, filepath.Join(binDir, "pg_ctl"), c.dataDir)
	}
	if err := c.mkdir(c.socketDir, 0o755); err != nil {
		return nil, err
	}

	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		if err := c.initData(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.writeConfig(); err != nil {
		return nil, err
	}
	return c, nil
}

func (cfg *Config) validate() error {
	var errs []error
	if cfg.Dir == "" {
		errs = append(errs, errors.New("pgcluster: Config.Dir is required"))
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		errs = append(errs, fmt.Errorf("pgcluster: Config.Port %d is out of range", cfg.Port))
	}
	for _, f := range []struct{ name, path string }{
		{"ServerCert", cfg.ServerCert}, {"ServerKey", cfg.ServerKey}, {"CACert", cfg.CACert},
	} {
		if f.path == "" {
			errs = append(errs, fmt.Errorf("pgcluster: Config.%s is required", f.name))
		} else if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("pgcluster: Config.%s: %w", f.name, err))
		}
	}
	if cfg.PrimaryOf != nil && cfg.Dir != "" {
		if abs, err := filepath.Abs(cfg.Dir); err == nil && abs == cfg.PrimaryOf.dir {
			errs = append(errs, errors.New("pgcluster: a replica cannot share its primary's Dir"))
		}
	}
	return errors.Join(errs...)
}

// initData creates a fresh data directory with initdb, or with
// pg_basebackup for a replica. A data directory without PG_VERSION is the
// leftover of a failed attempt and is removed first.
func (c *Cluster) initData(ctx context.Context) error {
	if err := os.RemoveAll(c.dataDir); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.mkdir(c.dataDir, 0o700); err != nil {
		return err
	}
	if p := c.cfg.PrimaryOf; p != nil {
		_, err := c.runServer(ctx, "pg_basebackup",
			"-D", c.dataDir, "-h", p.socketDir, "-p", strconv.Itoa(p.port), "-U", "postgres",
			"-w", "-R", "-X", "stream", "-c", "fast", "--no-sync")
		return err
	}
	_, err := c.runServer(ctx, "initdb",
		"-D", c.dataDir, "-U", "postgres", "-A", "trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	return err
}

// writeConfig (re)writes everything the package manages in the data
// directory. The server must not be running.
func (c *Cluster) writeConfig() error {
	confPath := filepath.Join(c.dataDir, "postgresql.conf")
	conf, err := os.ReadFile(confPath)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if !hasLine(string(conf), includeLine) {
		conf = append(conf, "\n# Added by internal/pgcluster.\n"+includeLine+"\n"...)
		if err := c.writeFile(confPath, conf, 0o600); err != nil {
			return err
		}
	}

	// A replica created from PrimaryOf takes its replication source from
	// sidecar.conf, so a primary that moved to another port is followed on
	// reuse; the copy pg_basebackup -R wrote into postgresql.auto.conf
	// (read last, so it would win) is dropped.
	var conninfo string
	if c.cfg.PrimaryOf != nil && c.IsReplica() {
		p := c.cfg.PrimaryOf
		conninfo = fmt.Sprintf("host=%s port=%d user=postgres application_name=%s",
			quoteConninfo(p.socketDir), p.port, quoteConninfo(StandbyName(c.dir)))
		autoPath := filepath.Join(c.dataDir, "postgresql.auto.conf")
		auto, err := os.ReadFile(autoPath)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if stripped := withoutSetting(string(auto), "primary_conninfo"); stripped != string(auto) {
			if err := c.writeFile(autoPath, []byte(stripped), 0o600); err != nil {
				return err
			}
		}
	}
	sidecar := sidecarConf(c.port, c.socketDir, conninfo, c.cfg.Settings)
	if err := c.writeFile(filepath.Join(c.dataDir, sidecarConfName), []byte(sidecar), 0o600); err != nil {
		return err
	}
	if err := c.writeFile(filepath.Join(c.dataDir, "pg_hba.conf"), []byte(HBA), 0o600); err != nil {
		return err
	}
	for _, f := range []struct {
		src, name string
		perm      os.FileMode
	}{
		{c.cfg.ServerCert, serverCertName, 0o644},
		{c.cfg.ServerKey, serverKeyName, 0o600},
		{c.cfg.CACert, caCertName, 0o644},
	} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := c.writeFile(filepath.Join(c.dataDir, f.name), b, f.perm); err != nil {
			return err
		}
	}
	return nil
}

func hasLine(text, line string) bool {
	for l := range strings.Lines(text) {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// Start starts the server with pg_ctl and waits up to 60 s until it accepts
// connections. On failure the error includes the tail of the server log.
func (c *Cluster) Start(ctx context.Context) error {
	// The log file lives in Dir, which the server user may not be able to
	// write, so create it here with the right owner.
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	f.Close()
	if err := c.chown(c.logPath); err != nil {
		return err
	}
	if _, err := c.runServer(ctx, "pg_ctl", "-D", c.dataDir, "-l", c.logPath, "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("%w\n--- tail of %s ---\n%s", err, c.logPath, c.logTail())
	}
	return nil
}

// Stop shuts the server down with pg_ctl -m fast and waits for it. Stopping a
// cluster that is not running returns nil, so Stop is idempotent.
func (c *Cluster) Stop(ctx context.Context) error {
	return c.stop(ctx, "fast")
}

// Kill stops the server immediately (pg_ctl -m immediate, no shutdown
// checkpoint; the next start runs crash recovery), for failure tests. Killing
// a cluster that is not running returns nil.
func (c *Cluster) Kill() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.stop(ctx, "immediate")
}

// KillHard kills the server's processes with SIGKILL, the postmaster and
// every backend at once, as when its host dies: no shutdown message
// reaches any client, connections simply close. The next Start runs
// crash recovery. Killing a cluster that is not running returns nil.
func (c *Cluster) KillHard() error {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return fmt.Errorf("pgcluster: postmaster.pid: %w", err)
	}
	// Every process is stopped before any is killed: the kills go one at a
	// time, and a backend still running after another died could answer a
	// client whose statement failed on the first (a host's death stops
	// them all at once). The postmaster goes first, so it forks no more.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgcluster: stop %d: %w", pid, err)
	}
	children := childProcesses(pid)
	for _, ch := range children {
		_ = syscall.Kill(ch, syscall.SIGSTOP)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgcluster: kill %d: %w", pid, err)
	}
	for _, ch := range children {
		_ = syscall.Kill(ch, syscall.SIGKILL)
	}
	// Wait until every process is gone, so the port is free and nothing
	// answers any more.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range append(children, pid) {
		for syscall.Kill(p, 0) == nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("pgcluster: process %d survived SIGKILL", p)
			}
			if isZombie(p) {
				break // killed; its parent (also killed) will not reap it
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// A killed postmaster may linger as a zombie that pg_ctl would take
	// for a running server; its pid file goes, as after a host's crash
	// the server would not find it running either.
	if err := os.Remove(filepath.Join(c.dataDir, "postmaster.pid")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// childProcesses lists the processes whose parent is pid (from /proc).
func childProcesses(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _ := parentOf(n); ppid == pid {
			out = append(out, n)
		}
	}
	return out
}

// procStat returns the state and parent pid of a process from
// /proc/PID/stat.
func procStat(pid int) (state string, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, err
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return "", 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err
}

func parentOf(pid int) (int, error) {
	_, ppid, err := procStat(pid)
	return ppid, err
}

func isZombie(pid int) bool {
	st, _, err := procStat(pid)
	return err != nil || st == "Z" || st == "X"
}

// StandbyName is the application_name a replica created in dir streams
// from its primary under (its walreceiver's name in the primary's
// pg_stat_replication): the last element of dir.
func StandbyName(dir string) string { return filepath.Base(dir) }

// SynchronousSettings are the postgresql.conf settings that make a
// primary commit only once the standby streaming under standby (see
// StandbyName) has the commit on disk: synchronous_standby_names names it
// (FIRST 1) and synchronous_commit is on. With them no acknowledged
// commit is missing on that standby when it is promoted; while it is
// down, commits on the primary wait for it to come back. Give them to the
// primary only: a promoted standby has no standby of its own and must
// not wait for one.
func SynchronousSettings(standby string) map[string]string {
	return map[string]string{
		"synchronous_standby_names": `FIRST 1 ("` + strings.ReplaceAll(standby, `"`, `""`) + `")`,
		"synchronous_commit":        "on",
	}
}

// Configure sets settings on the running server with ALTER SYSTEM (they
// go to postgresql.auto.conf, win over sidecar.conf and survive
// restarts) and reloads its configuration; an empty value resets a
// setting to the configuration files' value.
func (c *Cluster) Configure(ctx context.Context, settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sql := "ALTER SYSTEM RESET " + quoteIdent(k)
		if v := settings[k]; v != "" {
			sql = "ALTER SYSTEM SET " + quoteIdent(k) + " = " + quoteLiteral(v)
		}
		if _, err := c.Exec(ctx, "postgres", sql); err != nil {
			return err
		}
	}
	_, err := c.Exec(ctx, "postgres", "SELECT pg_reload_conf()")
	return err
}

// MakeSynchronous makes the running primary commit only once the standby
// streaming under standby has the commit (SynchronousSettings, through
// Configure) and waits until it reports that standby as synchronous.
func (c *Cluster) MakeSynchronous(ctx context.Context, standby string) error {
	if err := c.Configure(ctx, SynchronousSettings(standby)); err != nil {
		return err
	}
	q := "SELECT sync_state FROM pg_stat_replication WHERE application_name = " + quoteLiteral(standby)
	for {
		out, err := c.Exec(ctx, "postgres", q)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "sync" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: standby %s did not become synchronous: %w", standby, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// MakeAsynchronous undoes MakeSynchronous.
func (c *Cluster) MakeAsynchronous(ctx context.Context) error {
	return c.Configure(ctx, map[string]string{"synchronous_standby_names": "", "synchronous_commit": ""})
}

func (c *Cluster) stop(ctx context.Context, mode string) error {
	running, err := c.running(ctx)
	if err != nil || !running {
		return err
	}
	_, err = c.runServer(ctx, "pg_ctl", "-D", c.dataDir, "-m", mode, "-w", "-t", "60", "stop")
	return err
}

// Promote turns a running replica into a primary (pg_ctl promote) and waits
// until it accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	_, err := c.runServer(ctx, "pg_ctl", "-D", c.dataDir, "-w", "-t", "60", "promote")
	return err
}

// running reports whether a server is running on the data directory
// (pg_ctl status exits 0 when it is, 3 when it is not, 4 without a data
// directory).
func (c *Cluster) running(ctx context.Context) (bool, error) {
	_, err := c.runServer(ctx, "pg_ctl", "-D", c.dataDir, "status")
	if err == nil {
		return true, nil
	}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && (ee.ExitCode() == 3 || ee.ExitCode() == 4) {
		return false, nil
	}
	return false, err
}

// Port returns the loopback TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// Host returns the address the server listens on, always "127.0.0.1".
func (c *Cluster) Host() string { return Host }

// Dir returns the cluster home directory (absolute).
func (c *Cluster) Dir() string { return c.dir }

// SocketDir returns the directory holding the server's Unix socket.
func (c *Cluster) SocketDir() string { return c.socketDir }

// DataDir returns the data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogPath returns the server log file.
func (c *Cluster) LogPath() string { return c.logPath }

// IsReplica reports whether the cluster is a standby, that is whether its
// data directory has standby.signal. It turns false after Promote.
func (c *Cluster) IsReplica() bool {
	_, err := os.Stat(filepath.Join(c.dataDir, "standby.signal"))
	return err == nil
}

// Exec runs sql (any number of statements) in database dbname with psql over
// the Unix socket, as the superuser role postgres, stopping at the first
// error. It returns psql's trimmed unaligned, tuples-only output: one row per
// line, columns separated by "|". The error includes psql's stderr.
func (c *Cluster) Exec(ctx context.Context, dbname, sql string) (string, error) {
	cmd := c.command(ctx, false, c.psql,
		"-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
		"-h", c.socketDir, "-p", strconv.Itoa(c.port), "-U", "postgres", "-d", dbname, "-f", "-")
	cmd.Stdin = strings.NewReader(sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return "", fmt.Errorf("pgcluster: psql on port %d db %s: %w: %s", c.port, dbname, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// WaitReplayed waits until this replica has replayed everything committed on
// primary (which must be read-write) before the call, so those writes are
// visible on the replica. It polls until ctx ends.
//
// It writes a transactional logical-decoding message on the primary with
// synchronous_commit=on and waits for pg_last_wal_replay_lsn() to pass the
// end of that record. Comparing with pg_current_wal_lsn() instead would miss
// commits still in WAL buffers (synchronous_commit=off), and
// pg_current_wal_insert_lsn() on an idle primary can point past a page header
// that no record fills until the next background WAL record, 15 s later.
func (c *Cluster) WaitReplayed(ctx context.Context, primary *Cluster) error {
	if primary == nil {
		return errors.New("pgcluster: WaitReplayed needs the primary")
	}
	lsn, err := primary.Exec(ctx, "postgres",
		"SET synchronous_commit = on; SELECT pg_logical_emit_message(true, 'pgcluster', 'wait-replayed')")
	if err != nil {
		return err
	}
	query := fmt.Sprintf("SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)", quoteLiteral(lsn))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err := c.Exec(ctx, "postgres", query)
		if err == nil && out == "t" {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("replay has not reached %s", lsn)
			}
			return fmt.Errorf("pgcluster: wait for replay on port %d: %w (last: %v)", c.port, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// quoteLiteral quotes an SQL string literal (standard_conforming_strings on).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// runServer runs a PostgreSQL server tool from the bin directory as the
// server user, returning its combined output.
func (c *Cluster) runServer(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := c.command(ctx, true, filepath.Join(c.binDir, tool), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if tool != "pg_ctl" || len(args) == 0 || args[len(args)-1] != "status" {
		c.logCommand(cmd, out.Bytes())
	}
	if err != nil {
		label := tool
		if tool == "pg_ctl" {
			label += " " + args[len(args)-1] // The action comes last.
		}
		return out.String(), fmt.Errorf("pgcluster: %s: %w: %s", label, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// command builds a command with a clean environment: no PG* variables, so
// the caller's PGHOST or PGDATA cannot redirect it. asServer runs it as the
// server user when the process is root.
func (c *Cluster) command(ctx context.Context, asServer bool, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = c.dir
	cmd.WaitDelay = 5 * time.Second
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || (asServer && c.owner != nil && strings.HasPrefix(kv, "HOME=")) {
			continue
		}
		env = append(env, kv)
	}
	// A process group of its own keeps a terminal's Ctrl-C, meant for the
	// dev command, away from the pg_ctl that is stopping the servers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if asServer && c.owner != nil {
		// Switching user here rather than through runuser(1) lets a ctx
		// cancel reach the tool itself instead of a wrapper.
		env = append(env, "HOME="+c.owner.home)
		cmd.SysProcAttr.Credential = &syscall.Credential{
			Uid: uint32(c.owner.uid), Gid: uint32(c.owner.gid), Groups: []uint32{uint32(c.owner.gid)},
		}
	}
	cmd.Env = env
	return cmd
}

func (c *Cluster) logCommand(cmd *exec.Cmd, out []byte) {
	if c.cfg.Log == nil {
		return
	}
	c.logMu.Lock()
	defer c.logMu.Unlock()
	fmt.Fprintf(c.cfg.Log, "$ %s\n%s", strings.Join(cmd.Args, " "), out)
}

// logTail returns the last lines of the server log.
func (c *Cluster) logTail() string {
	const maxBytes = 4096
	f, err := os.Open(c.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		if _, err := f.Seek(-maxBytes, io.SeekEnd); err != nil {
			return fmt.Sprintf("(cannot read log: %v)", err)
		}
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// mkdir creates dir (if missing) with perm and gives it to the server user.
func (c *Cluster) mkdir(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.chown(dir)
}

// writeFile writes data to path with perm and gives it to the server user.
func (c *Cluster) writeFile(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.Chmod(path, perm); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.chown(path)
}

func (c *Cluster) chown(path string) error {
	if c.owner == nil {
		return nil
	}
	if err := os.Chown(path, c.owner.uid, c.owner.gid); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// checkTraversable fails early, with a useful message, when the server user
// cannot reach dir because an ancestor lacks search permission for it (for
// example a 0700 directory from t.TempDir or os.MkdirTemp).
func (c *Cluster) checkTraversable(dir string) error {
	if c.owner == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		switch {
		case !ok:
		case int(st.Uid) == c.owner.uid:
			ok = mode&0o100 != 0
		case int(st.Gid) == c.owner.gid:
			ok = mode&0o010 != 0
		default:
			ok = mode&0o001 != 0
		}
		if !ok {
			return fmt.Errorf("pgcluster: user postgres cannot traverse %s (mode %v); make it 0755 or use a directory it can reach", d, mode)
		}
		if parent := filepath.Dir(d); parent == d {
			return nil
		}
	}
}

func lookupServerUser() (*serverUser, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: running as root needs the OS user postgres to run the server: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgcluster: user postgres: %w", err)
	}
	return &serverUser{uid: uid, gid: gid, home: u.HomeDir}, nil
}

// findPsql prefers the psql next to the server binaries, then the one on
// PATH.
func findPsql(binDir string) (string, error) {
	if p := filepath.Join(binDir, "psql"); fileExists(p) {
		return p, nil
	}
	p, err := exec.LookPath("psql")
	if err != nil {
		return "", fmt.Errorf("pgcluster: psql not found in %s or PATH; install it with `apt-get install postgresql-client`", binDir)
	}
	return p, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago. The
// port may be taken again before the server binds it; that race is accepted.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(Host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pgcluster: pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
