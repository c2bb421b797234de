package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// sidecarProc is a running sidecar binary.
type sidecarProc struct {
	proc      *proc
	addr      *net.TCPAddr // client listener
	adminAddr *net.TCPAddr
}

// stop shuts the sidecar down gracefully (SIGTERM, SHUTDOWN_TIMEOUT=5s) and
// kills it if it takes longer than 15 s. Idempotent.
func (s *sidecarProc) stop() { s.proc.stop(syscall.SIGTERM, 15*time.Second) }

// startSidecar runs `brownie-sidecar run` against the primary with the
// client certificate, on free loopback ports, with extra overriding the
// defaults, and waits until /ready answers 200. name labels the log file.
func (b *bench) startSidecar(ctx context.Context, name string, extra map[string]string) (*sidecarProc, error) {
	return b.startSidecarBin(ctx, b.sidecar, name, extra)
}

// startSidecarBin is startSidecar for the binary bin.
func (b *bench) startSidecarBin(ctx context.Context, bin, name string, extra map[string]string) (*sidecarProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	env := map[string]string{
		"DB_HOST":          "localhost",
		"DB_PORT":          strconv.Itoa(b.pg.Port()),
		"LOCAL_CERT_DIR":   b.certDir,
		"LISTEN_ADDR":      addr.String(),
		"ADMIN_ADDR":       admin.String(),
		"POOL_MODE":        "session",
		"POOL_SIZE":        strconv.Itoa(benchPoolSize),
		"LOG_LEVEL":        "warn",
		"MAX_CLIENT_CONN":  "5000",
		"SHUTDOWN_TIMEOUT": "5s",
	}
	maps.Copy(env, b.opts.sidecarEnv)
	maps.Copy(env, extra)
	cmd := exec.Command(bin, "run")
	cmd.Dir = b.dir
	cmd.Env = cleanEnv("", env)
	b.logf("starting %s on %s (admin %s, POOL_MODE=%s, POOL_SIZE=%s, extra environment %v)", name, addr, admin, env["POOL_MODE"], env["POOL_SIZE"], b.opts.sidecarEnv)
	p, err := startProc(name, cmd, filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	s := &sidecarProc{proc: p, addr: addr, adminAddr: admin}
	b.onCleanup(s.stop)
	if err := waitReady(ctx, p, "http://"+admin.String()+"/ready", 30*time.Second); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

// waitReady polls url until it answers 200, the process exits or the
// timeout passes.
func waitReady(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		switch {
		case p.exited():
			return p.exitError()
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("GET %s not 200 after %s (last: %s); tail of %s:\n%s", url, timeout, last, p.logPath, tail(p.logPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
