package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sidecar is one in-process sidecar run through the same runCommand that
// the binary uses.
type sidecar struct {
	t        *testing.T
	addr     string // TCP listen address
	admin    string // admin base URL
	sockDir  string
	certDir  string
	logs     *lockedBuffer
	cancel   context.CancelFunc
	done     chan int
	exitCode int
}

// lockedBuffer collects the in-process sidecar's output.
type lockedBuffer = pgtest.Buffer

// copyCerts gives a test its own certificate directory (so it can rotate
// or break files) with the client pair and CA of srv.
func copyCerts(t *testing.T, srv *pgtest.Server) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		data, err := os.ReadFile(filepath.Join(srv.CertDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startSidecar runs a sidecar in front of srv's primary with env overrides
// and stops it (expecting exit code 0) when the test ends.
func startSidecar(t *testing.T, srv *pgtest.Server, extra map[string]string) *sidecar {
	t.Helper()
	return startSidecarThreads(t, srv, extra, Threads{})
}

// startSidecarThreads is startSidecar with th as the sidecar's way to
// change its thread count.
func startSidecarThreads(t *testing.T, srv *pgtest.Server, extra map[string]string, th Threads) *sidecar {
	t.Helper()
	sc := &sidecar{t: t, logs: &lockedBuffer{}, done: make(chan int, 1), sockDir: t.TempDir()}
	env := map[string]string{
		"DB_HOST":              "localhost",
		"DB_PORT":              strconv.Itoa(srv.Primary.Port()),
		"LOCAL_CERT_DIR":       srv.CertDir,
		"LISTEN_ADDR":          "127.0.0.1:0",
		"LISTEN_SOCKET_DIR":    sc.sockDir,
		"ADMIN_ADDR":           "127.0.0.1:0",
		"LOG_LEVEL":            "debug",
		"SHUTDOWN_TIMEOUT":     "5s",
		"POOL_ACQUIRE_TIMEOUT": "5s",
	}
	for k, v := range extra {
		env[k] = v
	}
	if env["BACKUP_PROVIDER"] != "" && env["BACKUP_WORKER"] == "" {
		// The sidecar runs in-process: its executable is the test binary,
		// so the worker is not beside it.
		w, err := testbin.Build("github.com/brownie/brownie-sidecar/cmd/brownie-backup")
		if err != nil {
			t.Fatal(err)
		}
		env["BACKUP_WORKER"] = w
	}
	sc.certDir = env["LOCAL_CERT_DIR"]
	ctx, cancel := context.WithCancel(context.Background())
	sc.cancel = cancel
	started := make(chan Started, 1)
	go func() {
		sc.done <- runCommand(ctx, env, IO{Stdout: io.Discard, Stderr: sc.logs, Threads: th}, func(st Started) { started <- st })
	}()
	select {
	case st := <-started:
		sc.addr = st.ProxyAddrs[0].String()
		sc.admin = "http://" + st.AdminAddr.String()
	case code := <-sc.done:
		cancel()
		t.Fatalf("sidecar exited with %d during startup:\n%s", code, sc.logs)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("sidecar did not start:\n%s", sc.logs)
	}
	t.Cleanup(func() {
		if code := sc.stop(); code != 0 {
			t.Errorf("sidecar exited with %d", code)
		}
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", sc.logs)
		}
	})
	return sc
}

// stop cancels the sidecar (as SIGTERM would) and returns its exit code.
// Idempotent.
func (sc *sidecar) stop() int {
	sc.cancel()
	if sc.done != nil {
		select {
		case sc.exitCode = <-sc.done:
		case <-time.After(30 * time.Second):
			sc.t.Fatalf("sidecar did not stop:\n%s", sc.logs)
		}
		sc.done = nil
	}
	return sc.exitCode
}

// dsn is a connection string to the sidecar's TCP listener.
func (sc *sidecar) dsn(extra string) string {
	host, port, _ := net.SplitHostPort(sc.addr)
	return fmt.Sprintf("host=%s port=%s dbname=brownie_metadata user=brownie-fastapi-server sslmode=disable %s", host, port, extra)
}

func (sc *sidecar) connect(t *testing.T, extra string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.dsn(extra))
	if err != nil {
		t.Fatalf("connect through sidecar: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// get fetches an admin URL path and returns status and body.
func (sc *sidecar) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(sc.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	pgtest.WaitFor(t, within, what, cond)
}

// pgErrCode returns the SQLSTATE of err, or "".
func pgErrCode(err error) string {
	if pe, ok := err.(*pgconn.PgError); ok {
		return pe.Code
	}
	var pe *pgconn.PgError
	if asPgError(err, &pe) {
		return pe.Code
	}
	return ""
}
