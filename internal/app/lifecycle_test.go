package app

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// installClientCert issues a client certificate from srv's CA with opts and
// writes it into dir (key first, each file atomically). It returns the
// serial in the decimal form pg_stat_ssl.client_serial shows.
func installClientCert(t *testing.T, srv *pgtest.Server, dir string, opts brownietls.LeafOptions) string {
	t.Helper()
	opts.CommonName, opts.Client = "brownie-fastapi-server", true
	certPEM, keyPEM, err := srv.CA().Issue(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := brownietls.WriteFileAtomic(filepath.Join(dir, "client.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := brownietls.WriteFileAtomic(filepath.Join(dir, "client.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return serialOf(t, certPEM)
}

func serialOf(t *testing.T, certPEM []byte) string {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return new(big.Int).Set(c.SerialNumber).String()
}

const serialQuery = "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

func TestCertificateRotationUnderLoadMovesNewConnectionsToTheNewSerialWithoutErrors(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	dir := copyCerts(t, srv)
	sc := startSidecar(t, srv, map[string]string{
		"LOCAL_CERT_DIR": dir, "POOL_SIZE": "8", "POOL_RETIRE_INTERVAL": "100ms", "LOG_LEVEL": "info",
	})
	ctx := ctx10(t)
	oldSerial := func() string {
		c := sc.connect(t, "")
		defer c.Close(ctx)
		var s string
		if err := c.QueryRow(ctx, serialQuery).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}()

	var (
		stop     atomic.Bool
		failures atomic.Int64
		queries  atomic.Int64
		mu       sync.Mutex
		seen     = map[string]int{}
		firstErr error
		wg       sync.WaitGroup
	)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c, err := pgx.Connect(ctx, sc.dsn(""))
				var s string
				if err == nil {
					for range 5 {
						if err = c.QueryRow(ctx, serialQuery).Scan(&s); err != nil {
							break
						}
						queries.Add(1)
					}
					c.Close(ctx)
				}
				mu.Lock()
				if err != nil {
					failures.Add(1)
					if firstErr == nil {
						firstErr = err
					}
				} else {
					seen[s]++
				}
				mu.Unlock()
			}
		}()
	}
	waitFor(t, 10*time.Second, "load to start", func() bool { return queries.Load() > 100 })
	newSerial := installClientCert(t, srv, dir, brownietls.LeafOptions{TTL: time.Hour})
	waitFor(t, 20*time.Second, "a session on the new certificate", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[newSerial] > 0
	})
	// Old-certificate upstreams are retired gradually; soon every new
	// session lands on the new serial.
	waitFor(t, 20*time.Second, "old-certificate upstreams to retire", func() bool {
		mu.Lock()
		clear(seen)
		mu.Unlock()
		time.Sleep(300 * time.Millisecond) // sampling window
		mu.Lock()
		defer mu.Unlock()
		return seen[oldSerial] == 0 && seen[newSerial] > 0
	})
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d failed sessions during rotation; first: %v", n, firstErr)
	}
	t.Logf("%d queries, serial %s -> %s", queries.Load(), oldSerial, newSerial)
	if _, body := sc.get(t, "/metrics"); !strings.Contains(body, `brownie_sidecar_upstream_closed_total{reason="certificate_rotated",role="primary",shard="shard-0"}`) {
		t.Fatalf("retirements not in metrics:\n%s", grepLines(body, "upstream_closed"))
	}
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestAnExpiredCertificateGives28000AndNotReadyUntilAValidOneArrives(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	dir := copyCerts(t, srv)
	past := time.Now().Add(-48 * time.Hour)
	installClientCert(t, srv, dir, brownietls.LeafOptions{NotBefore: past, NotAfter: past.Add(time.Hour)})
	sc := startSidecar(t, srv, map[string]string{"LOCAL_CERT_DIR": dir})
	ctx := ctx10(t)

	_, err := pgx.Connect(ctx, sc.dsn(""))
	if pgErrCode(err) != "28000" || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("want 28000 naming the expiry, got %v", err)
	}
	if code, body := sc.get(t, "/ready"); code != 503 || !strings.Contains(body, "certificate") {
		t.Fatalf("/ready = %d %s", code, body)
	}

	serial := installClientCert(t, srv, dir, brownietls.LeafOptions{TTL: time.Hour})
	waitFor(t, 15*time.Second, "/ready after a valid certificate", func() bool {
		code, _ := sc.get(t, "/ready")
		return code == 200
	})
	c := sc.connect(t, "")
	var got string
	if err := c.QueryRow(ctx, serialQuery).Scan(&got); err != nil || got != serial {
		t.Fatalf("serial %q (%v), want %q", got, err, serial)
	}

	// A malformed replacement is rejected: the valid certificate stays.
	if err := brownietls.WriteFileAtomic(filepath.Join(dir, "client.crt"), []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the reload failure to be counted", func() bool {
		_, body := sc.get(t, "/metrics")
		return !strings.Contains(body, `brownie_sidecar_certificate_refresh_failures_total{source="file"} 1`) &&
			strings.Contains(body, "brownie_sidecar_certificate_refresh_failures_total")
	})
	c.Close(ctx)
	c2 := sc.connect(t, "")
	if err := c2.QueryRow(ctx, serialQuery).Scan(&got); err != nil || got != serial {
		t.Fatalf("after a malformed replacement: serial %q (%v), want %q", got, err, serial)
	}
}

func TestMalformedCertificateFilesStopStartupWithAClearMessage(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	dir := copyCerts(t, srv)
	if err := os.WriteFile(filepath.Join(dir, "client.crt"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	code := runCommand(context.Background(), map[string]string{
		"DB_PORT": "1", "LOCAL_CERT_DIR": dir, "LISTEN_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0",
	}, IO{Stdout: io.Discard, Stderr: &stderr}, nil)
	if code != ExitFail || !strings.Contains(stderr.String(), "client.crt") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "PRIVATE KEY") {
		t.Fatal("key material in the error output")
	}
}

func TestABadConfigurationListsEveryProblemAndExits2(t *testing.T) {
	var stderr lockedBuffer
	code := runCommand(context.Background(), map[string]string{
		"DB_SSL_MODE": "disable", "POOL_SIZE": "0", "LISTEN_ADDR": "nowhere", "POOL_IDLE_TIMEOUT": "soon",
	}, IO{Stdout: io.Discard, Stderr: &stderr}, nil)
	if code != ExitConfig {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"DB_SSL_MODE", "POOL_SIZE", "LISTEN_ADDR", "POOL_IDLE_TIMEOUT"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("error output does not mention %s:\n%s", want, stderr.String())
		}
	}
}

func TestUpstreamDownGivesAClearErrorAndServiceResumesWhenItReturns(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	// A short FAILOVER_WAIT: statements needing the stopped primary fail
	// after it instead of waiting the default 15s for it to return.
	const wait = 2 * time.Second
	sc := startSidecar(t, srv, map[string]string{"DB_CONNECT_TIMEOUT": "2s", "FAILOVER_WAIT": wait.String()})
	ctx := ctx10(t)
	existing := sc.connect(t, "")
	if err := existing.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.Primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// The session's statement waits for the primary; the client's
	// CancelRequest ends the wait with 57014 and the session goes on.
	waited := make(chan error, 1)
	go func() {
		_, err := existing.Exec(ctx, "SELECT 1")
		waited <- err
	}()
	waitFor(t, 5*time.Second, "the statement to wait for a primary", func() bool {
		_, body := sc.get(t, "/metrics")
		return strings.Contains(body, `brownie_sidecar_failover_waiting{shard="shard-0"} 1`)
	})
	start := time.Now()
	if err := existing.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; pgErrCode(err) != "57014" {
		t.Fatalf("a cancelled wait for the primary: %v, want 57014", err)
	}
	if el := time.Since(start); el > wait/2 {
		t.Errorf("the cancel ended the wait after %s", el)
	}
	// After FAILOVER_WAIT the statement fails with ERROR 08006 naming the
	// shard; the session is not closed.
	start = time.Now()
	_, err := existing.Exec(ctx, "SELECT 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" || pe.Severity != "ERROR" || !strings.Contains(pe.Message, "has no primary") {
		t.Fatalf("a statement with the primary down: %v, want ERROR 08006 has no primary", err)
	}
	if el := time.Since(start); el < wait || el > wait+3*time.Second {
		t.Errorf("the statement failed after %s; FAILOVER_WAIT is %s", el, wait)
	}
	if existing.IsClosed() {
		t.Fatal("the session was closed by the failed wait")
	}
	// A new session cannot start while no host answers: FATAL 08006 at
	// once, no wait.
	start = time.Now()
	_, err = pgx.Connect(ctx, sc.dsn(""))
	if pgErrCode(err) != "08006" || !strings.Contains(err.Error(), "could not connect to upstream") {
		t.Fatalf("want 08006 could not connect, got %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("connection failure took %s", el)
	}
	if err := srv.Primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The same session goes on once the primary is back.
	var one int
	if err := existing.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("the session after the primary came back: %v", err)
	}
	c := sc.connect(t, "")
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestGracefulShutdownLetsTransactionsFinishThenTerminatesWith57P01(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"SHUTDOWN_TIMEOUT": "3s"})
	ctx := ctx10(t)
	idle := sc.connect(t, "")
	busy := sc.connect(t, "")
	stuck := sc.connect(t, "")
	if _, err := busy.Exec(ctx, "CREATE TABLE shutdown_t (v int)"); err != nil {
		t.Fatal(err)
	}
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO shutdown_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := stuck.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}

	go sc.cancel() // SIGTERM
	waitFor(t, 5*time.Second, "/ready to report draining", func() bool {
		code, _ := sc.get(t, "/ready")
		return code == 503
	})
	if _, err := idle.Exec(ctx, "SELECT 1"); pgErrCode(err) != "57P01" && !strings.Contains(err.Error(), "57P01") {
		t.Fatalf("idle client: want 57P01, got %v", err)
	}
	// The open transaction may still finish.
	if _, err := tx.Exec(ctx, "INSERT INTO shutdown_t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The stuck one is terminated when the timeout expires.
	start := time.Now()
	_, err = stuck.Exec(ctx, "SELECT pg_sleep(10)")
	if err == nil {
		t.Fatal("stuck transaction survived the shutdown timeout")
	}
	if el := time.Since(start); el > 6*time.Second {
		t.Fatalf("terminated after %s", el)
	}
	if code := sc.stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	out, err := srv.Primary.Exec(ctx, "brownie_metadata", "SELECT count(*) FROM shutdown_t")
	if err != nil || out != "2" {
		t.Fatalf("committed rows: %q %v", out, err)
	}
}

func TestHealthReadyAndMetricsEndpoints(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	if code, _ := sc.get(t, "/health"); code != 200 {
		t.Fatalf("/health %d", code)
	}
	waitFor(t, 10*time.Second, "/ready", func() bool { code, _ := sc.get(t, "/ready"); return code == 200 })
	c := sc.connect(t, "")
	relayed := func() (toClient, toUpstream float64) {
		_, body := sc.get(t, "/metrics")
		toClient, _ = metricValue(body, `brownie_sidecar_relayed_bytes_total{direction="upstream_to_client"}`)
		toUpstream, _ = metricValue(body, `brownie_sidecar_relayed_bytes_total{direction="client_to_upstream"}`)
		return toClient, toUpstream
	}
	var big string
	if err := c.QueryRow(ctx10(t), "SELECT repeat('x', 100000)").Scan(&big); err != nil || len(big) != 100000 {
		t.Fatalf("a 100,000-byte value: %d bytes, %v", len(big), err)
	}
	// Relayed bytes are counted by the time the client has its answer.
	down1, up1 := relayed()
	if down1 < 100000 || up1 < float64(len("SELECT repeat('x', 100000)")) {
		t.Errorf("relayed bytes after a 100,000-byte value: %v to the client, %v upstream", down1, up1)
	}
	_, _ = c.Exec(ctx10(t), "SELECT 1/0")
	if down2, up2 := relayed(); down2 <= down1 || up2 < up1+float64(len("SELECT 1/0")) {
		t.Errorf("relayed bytes after a failing statement: %v to the client (was %v), %v upstream (was %v)", down2, down1, up2, up1)
	}
	_, body := sc.get(t, "/metrics")
	for _, want := range []string{
		"brownie_sidecar_client_connections 1",
		`brownie_sidecar_upstream_connections{role="primary",shard="shard-0",state="in_use"} 1`,
		`brownie_sidecar_pool_wait_seconds_count{role="primary",shard="shard-0"}`,
		`brownie_sidecar_relayed_bytes_total{direction="upstream_to_client"}`,
		`brownie_sidecar_errors_total{class="22",source="upstream"} 1`,
		`brownie_sidecar_certificate_expiry_timestamp_seconds{source="file"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if code, _ := sc.get(t, "/nope"); code != 404 {
		t.Errorf("/nope %d", code)
	}
}
