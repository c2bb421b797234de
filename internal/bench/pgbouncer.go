package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/template"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

// benchPoolSize is the upstream pool size of PgBouncer and the sidecar
// during the session table: above the largest client count, so no client
// waits for a connection in session mode.
const benchPoolSize = 60

// txnPoolSize is the upstream pool size of PgBouncer and the sidecar during
// the transaction table: 10 upstream connections shared by up to
// 50 clients.
const txnPoolSize = 10

// maxBenchClients is the largest pgbench client count accepted.
const maxBenchClients = benchPoolSize

var bouncerIni = template.Must(template.New("ini").Parse(`;; Written by internal/bench for one run.
[databases]
brownie_metadata = host=localhost port={{.PGPort}} dbname=brownie_metadata user=brownie-fastapi-server

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {{.Port}}
unix_socket_dir =
auth_type = trust
auth_file = {{.Dir}}/userlist.txt
pool_mode = {{.Mode}}
default_pool_size = {{.PoolSize}}
max_client_conn = {{.MaxClients}}
server_tls_sslmode = verify-full
server_tls_ca_file = {{.Dir}}/ca.crt
server_tls_cert_file = {{.Dir}}/client.crt
server_tls_key_file = {{.Dir}}/client.key
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
`))

// bouncer is a running PgBouncer.
type bouncer struct{ proc *proc }

// stop shuts PgBouncer down immediately (SIGTERM). Idempotent.
func (p *bouncer) stop() { p.proc.stop(syscall.SIGTERM, 10*time.Second) }

// startPgBouncer writes PgBouncer's files into a directory the postgres OS
// user owns (copies of the CA and client certificate, the key 0600), starts
// it in the foreground as that user with the given pool_mode and
// default_pool_size and waits until a session through it runs a query,
// which proves the TLS upstream works. name labels the directory and the
// log file.
func (b *bench) startPgBouncer(ctx context.Context, name, mode string, poolSize int) (*bouncer, *net.TCPAddr, error) {
	return b.startPgBouncerFor(ctx, name, mode, poolSize, 3000)
}

// startPgBouncerFor is startPgBouncer with max_client_conn maxClients.
func (b *bench) startPgBouncerFor(ctx context.Context, name, mode string, poolSize, maxClients int) (*bouncer, *net.TCPAddr, error) {
	owner, err := serverUser()
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	if err := owner.chown(dir); err != nil {
		return nil, nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	write := func(file string, data []byte, perm os.FileMode) error {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, data, perm); err != nil {
			return err
		}
		if err := os.Chmod(p, perm); err != nil {
			return err
		}
		return owner.chown(p)
	}
	for _, f := range []struct {
		name string
		perm os.FileMode
	}{{"ca.crt", 0o644}, {"client.crt", 0o644}, {"client.key", 0o600}} {
		data, err := os.ReadFile(filepath.Join(b.certDir, f.name))
		if err != nil {
			return nil, nil, err
		}
		if err := write(f.name, data, f.perm); err != nil {
			return nil, nil, err
		}
	}
	if err := write("userlist.txt", []byte(`"`+pgcluster.BrownieRole+`" ""`+"\n"), 0o600); err != nil {
		return nil, nil, err
	}
	var ini bytes.Buffer
	if err := bouncerIni.Execute(&ini, map[string]any{
		"PGPort": b.pg.Port(), "Port": addr.Port, "Dir": dir, "Mode": mode, "PoolSize": poolSize, "MaxClients": maxClients,
	}); err != nil {
		return nil, nil, err
	}
	iniPath := filepath.Join(dir, "pgbouncer.ini")
	if err := write("pgbouncer.ini", ini.Bytes(), 0o600); err != nil {
		return nil, nil, err
	}

	cmd := exec.Command(b.bouncer, iniPath)
	cmd.Dir = dir
	home := ""
	if owner != nil {
		home = owner.home
	}
	cmd.Env = cleanEnv(home, nil)
	owner.apply(cmd)
	b.logf("starting %s on %s (pool_mode=%s, default_pool_size=%d)", name, addr, mode, poolSize)
	p, err := startProc(name, cmd, filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, nil, err
	}
	pb := &bouncer{proc: p}
	b.onCleanup(pb.stop)
	if err := waitSession(ctx, p, addr.String(), 30*time.Second); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return pb, addr, nil
}

// waitSession retries a full session (startup and SELECT 1) against addr
// until one succeeds, the process exits or the timeout passes.
func waitSession(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := openSession(sctx, addr, "SELECT 1")
		cancel()
		if err == nil {
			conn.Close()
			return nil
		}
		last = err
		switch {
		case p.exited():
			return p.exitError()
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("no working session on %s after %s: %v; tail of %s:\n%s", addr, timeout, last, p.logPath, tail(p.logPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
