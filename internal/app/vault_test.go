package app

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/internal/vaulttest"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// vaultFor starts a fake Vault whose PKI CA is srv's CA, so Postgres trusts
// the client certificates it issues and its issuing_ca verifies Postgres.
func vaultFor(t *testing.T, srv *pgtest.Server, mod func(*vaulttest.Config)) *vaulttest.Server {
	t.Helper()
	cfg := vaulttest.Config{CACert: srv.CA().Cert, CAKey: srv.CA().Key}
	if mod != nil {
		mod(&cfg)
	}
	return vaulttest.Start(t, cfg)
}

// vaultEnv is the sidecar environment for a Vault source at v, plus extra
// key/value pairs. LOCAL_CERT_DIR points at an empty directory, so the
// sidecar can only work through Vault.
func vaultEnv(t *testing.T, v *vaulttest.Server, extra ...string) map[string]string {
	env := map[string]string{
		"VAULT_ENABLED":  "true",
		"VAULT_ADDR":     v.URL(),
		"VAULT_PKI_ROLE": "brownie",
		"LOCAL_CERT_DIR": t.TempDir(),
		"LOG_LEVEL":      "info",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := brownietls.WriteFileAtomic(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitCertReady waits until /ready reports the certificate check as ok.
func (sc *sidecar) waitCertReady(t *testing.T, within time.Duration) {
	t.Helper()
	waitFor(t, within, "a valid certificate in /ready", func() bool {
		_, body := sc.get(t, "/ready")
		return strings.Contains(body, `"certificate":"ok"`)
	})
}

// metric returns the value of the sample whose name and labels are exactly
// series (such as `x_total{source="vault"}`), or -1 when absent.
func (sc *sidecar) metric(t *testing.T, series string) float64 {
	t.Helper()
	_, body := sc.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// serialOn returns the client certificate serial (decimal) of conn's
// upstream, as Postgres sees it.
func serialOn(ctx context.Context, conn *pgx.Conn) (string, error) {
	var s string
	err := conn.QueryRow(ctx, serialQuery).Scan(&s)
	return s, err
}

// freshSerial opens a new client connection and returns its upstream serial.
func (sc *sidecar) freshSerial(t *testing.T) string {
	t.Helper()
	ctx := ctx10(t)
	c, err := pgx.Connect(ctx, sc.dsn(""))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(ctx)
	s, err := serialOn(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// issuedSerials returns the decimal serials v has issued.
func issuedSerials(v *vaulttest.Server) map[string]bool {
	out := map[string]bool{}
	for _, c := range v.Issued() {
		out[c.Serial.String()] = true
	}
	return out
}

func TestVaultCertificatesRotateEvery20sUnderPgxAndPgbenchLoadWithoutAFailedQuery(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	v := vaultFor(t, srv, nil)
	// A renewable token from a file, as Vault Agent writes it: renewed
	// about every 20s during the run.
	tokenFile := writeFile(t, "token", v.CreateToken(vaulttest.TokenOptions{TTL: 30 * time.Second, Renewable: true}))
	sc := startSidecar(t, srv, vaultEnv(t, v,
		"VAULT_TOKEN_FILE", tokenFile, "VAULT_CERT_TTL", "20s",
		"POOL_SIZE", "16", "POOL_RETIRE_INTERVAL", "200ms"))
	sc.waitCertReady(t, 15*time.Second)

	const runFor = 90 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), runFor+2*time.Minute)
	defer cancel()

	// pgbench: 4 clients, a new connection per transaction (-C), rate
	// limited so that two CPUs also have room for pgx, the sidecar and
	// Postgres. The script reads the serial, as the pgx clients do.
	script := writeFile(t, "serial.sql", "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n")
	host, port, _ := net.SplitHostPort(sc.addr)
	bench := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pgbench",
		"-h", host, "-p", port, "-U", "brownie-fastapi-server", "-n", "-C", "-c", "4", "-j", "2",
		"-T", strconv.Itoa(int(runFor/time.Second)), "-R", "40", "-f", script, "brownie_metadata")
	bench.Env = append(os.Environ(), "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	var benchOut, benchErr bytes.Buffer
	bench.Stdout, bench.Stderr = &benchOut, &benchErr
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()

	var (
		stop     atomic.Bool
		queries  atomic.Int64
		failures atomic.Int64
		mu       sync.Mutex
		firstErr error
		seen     = map[string]time.Time{} // serial → first seen
		wg       sync.WaitGroup
	)
	failed := func(err error) {
		failures.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	// Churn: new connections all the time, so dials follow the rotations.
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c, err := pgx.Connect(ctx, sc.dsn(""))
				if err != nil {
					failed(fmt.Errorf("connect: %w", err))
					continue
				}
				for range 3 {
					s, err := serialOn(ctx, c)
					if err != nil {
						failed(err)
						break
					}
					queries.Add(1)
					mu.Lock()
					if _, ok := seen[s]; !ok {
						seen[s] = time.Now()
					}
					mu.Unlock()
				}
				c.Close(ctx)
				time.Sleep(10 * time.Millisecond) // pacing, not waiting
			}
		}()
	}
	// Long-lived sessions, made before most rotations, keep working after
	// their certificate has expired and been replaced.
	for i := range 2 {
		c := sc.connect(t, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				var got int
				if err := c.QueryRow(ctx, "SELECT $1::int + 1", n).Scan(&got); err != nil || got != n+1 {
					failed(fmt.Errorf("long-lived session %d: %v (got %d)", i, err, got))
					return
				}
				queries.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	var benchResult error
	select {
	case benchResult = <-benchDone:
	case <-time.After(runFor + time.Minute):
		t.Error("pgbench did not finish")
	}
	stop.Store(true)
	wg.Wait()

	if benchResult != nil || strings.Contains(strings.ToLower(benchErr.String()), "error") {
		t.Errorf("pgbench: %v\nstderr:\n%s\nstdout:\n%s", benchResult, benchErr.String(), benchOut.String())
	}
	out := benchOut.String()
	if !strings.Contains(out, "number of failed transactions: 0 ") {
		t.Errorf("pgbench reports failed transactions:\n%s", out)
	}
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("no transaction count in pgbench output:\n%s", out)
	} else if n, _ := strconv.Atoi(m[1]); n < 1000 {
		t.Errorf("pgbench processed only %d transactions in %s", n, runFor)
	}
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d failed pgx queries or connections; first: %v", n, firstErr)
	}

	// Postgres saw several certificates, all of them issued by Vault.
	issued := issuedSerials(v)
	mu.Lock()
	defer mu.Unlock()
	for s := range seen {
		if !issued[s] {
			t.Errorf("serial %s was not issued by Vault", s)
		}
	}
	if len(seen) < 3 {
		t.Fatalf("pg_stat_ssl showed %d distinct serials over %s, want at least 3", len(seen), runFor)
	}
	if rot := sc.metric(t, `brownie_sidecar_certificate_rotations_total{source="vault"}`); rot < 3 {
		t.Errorf("rotations_total = %v", rot)
	}
	if f := sc.metric(t, `brownie_sidecar_certificate_refresh_failures_total{source="vault"}`); f != 0 {
		t.Errorf("refresh failures = %v", f)
	}
	if r := sc.metric(t, `brownie_sidecar_vault_token_renewals_total{method="token"}`); r < 1 {
		t.Errorf("token renewals = %v", r)
	}
	if vs := v.Violations(); len(vs) != 0 {
		t.Errorf("Vault saw protocol violations: %v", vs)
	}
	t.Logf("%d pgx queries, %d serials seen, %d certificates issued; pgbench: %s",
		queries.Load(), len(seen), len(issued), m[0])
}

func TestWhenVaultIsDownTrafficContinuesThenNewConnectionsGet28000AndServiceResumesWhenItReturns(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	v := vaultFor(t, srv, nil)
	sc := startSidecar(t, srv, vaultEnv(t, v,
		"VAULT_TOKEN", v.CreateToken(vaulttest.TokenOptions{}), "VAULT_CERT_TTL", "6s"))
	sc.waitCertReady(t, 15*time.Second)
	ctx := ctx10(t)
	generation := `brownie_sidecar_certificate_generation{source="vault"}`

	// Stop Vault just after a rotation, so the certificate in use has
	// nearly its whole lifetime left.
	g := sc.metric(t, generation)
	waitFor(t, 15*time.Second, "a rotation", func() bool { return sc.metric(t, generation) > g })
	v.Stop()
	// New connections still work (one may get the idle upstream from the
	// warm-up, made with the previous certificate; the other is dialled
	// with the current one).
	held := sc.connect(t, "")
	second := sc.connect(t, "")
	issued := issuedSerials(v)
	var oldSerials []string
	for _, c := range []*pgx.Conn{held, second} {
		s, err := serialOn(ctx, c)
		if err != nil || !issued[s] {
			t.Fatalf("new connection while Vault is down: serial %q (%v)", s, err)
		}
		oldSerials = append(oldSerials, s)
	}

	// The certificate expires: /ready turns 503 and new connections get a
	// clear 28000. (held and second keep the pool's only upstreams busy,
	// so the next client needs a new dial.)
	waitFor(t, 20*time.Second, "/ready to fail on the expired certificate", func() bool {
		code, body := sc.get(t, "/ready")
		return code == 503 && strings.Contains(body, "expired")
	})
	_, err := pgx.Connect(ctx, sc.dsn(""))
	if pgErrCode(err) != "28000" || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("new connection after expiry: want 28000 about the certificate, got %v", err)
	}
	t.Logf("after expiry: %v", err)
	// Existing sessions are not affected by the expiry.
	for _, c := range []*pgx.Conn{held, second} {
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("existing session after expiry: %v", err)
		}
	}
	if f := sc.metric(t, `brownie_sidecar_certificate_refresh_failures_by_reason_total{reason="vault_unreachable",source="vault"}`); f < 1 {
		t.Errorf("vault_unreachable failures = %v", f)
	}
	if s := sc.metric(t, `brownie_sidecar_certificate_expiry_seconds{source="vault"}`); s >= 0 {
		t.Errorf("expiry seconds %v, want negative", s)
	}

	// Vault returns; the sidecar recovers by itself.
	v.Restart()
	waitFor(t, 20*time.Second, "/ready after Vault returned", func() bool {
		code, _ := sc.get(t, "/ready")
		return code == 200
	})
	if s := sc.freshSerial(t); slices.Contains(oldSerials, s) || !issuedSerials(v)[s] {
		t.Fatalf("after recovery: serial %s (before the outage %v)", s, oldSerials)
	}
}

func TestVaultTokensThatExpireOrAreRevokedAreReplacedByKubernetesAndAppRoleLogins(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	for _, method := range []string{"kubernetes", "approle"} {
		t.Run(method, func(t *testing.T) {
			v := vaultFor(t, srv, func(c *vaulttest.Config) {
				c.KubernetesJWTs = []string{"jwt-1"}
				c.AppRoleRoleID, c.AppRoleSecretIDs = "role-1", []string{"secret-1"}
				c.LoginTTL, c.LoginMaxTTL = 2*time.Second, 4*time.Second
			})
			credFile := writeFile(t, "credential", map[string]string{"kubernetes": "jwt-1", "approle": "secret-1"}[method])
			env := vaultEnv(t, v, "VAULT_AUTH", method, "VAULT_CERT_TTL", "4s")
			if method == "kubernetes" {
				env["VAULT_K8S_ROLE"], env["VAULT_K8S_TOKEN_FILE"] = "brownie-sidecar", credFile
			} else {
				env["VAULT_APPROLE_ROLE_ID"], env["VAULT_APPROLE_SECRET_ID_FILE"] = "role-1", credFile
			}
			sc := startSidecar(t, srv, env)
			sc.waitCertReady(t, 15*time.Second)
			ctx := ctx10(t)
			held := sc.connect(t, "")

			// The credential is rotated on disk; Vault accepts only the new
			// one afterwards, so later logins prove the file is re-read.
			accept := func(creds ...string) {
				if method == "kubernetes" {
					v.SetKubernetesJWTs(creds...)
				} else {
					v.SetAppRoleSecretIDs(creds...)
				}
			}
			accept("jwt-1", "secret-1", "cred-2")
			if err := brownietls.WriteFileAtomic(credFile, []byte("cred-2\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			accept("cred-2")

			// Tokens live 2s, renewable up to 4s: renewals, then logins.
			waitFor(t, 15*time.Second, "renewals and a login with the new credential", func() bool {
				st := v.Stats()
				return st.Logins[method] >= 2 && st.Renewals >= 1
			})
			// A revoked token (403) leads to a login at the next request.
			logins := v.Stats().Logins[method]
			v.RevokeTokens()
			gen := sc.metric(t, `brownie_sidecar_certificate_generation{source="vault"}`)
			waitFor(t, 15*time.Second, "a certificate after the revocation", func() bool {
				return v.Stats().Logins[method] > logins &&
					sc.metric(t, `brownie_sidecar_certificate_generation{source="vault"}`) > gen
			})

			if s := sc.freshSerial(t); !issuedSerials(v)[s] {
				t.Fatalf("serial %s was not issued by Vault", s)
			}
			if _, err := held.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatalf("session across logins: %v", err)
			}
			if f := sc.metric(t, fmt.Sprintf(`brownie_sidecar_vault_login_failures_total{method=%q}`, method)); f != 0 {
				t.Errorf("login failures %v", f)
			}
			if n := sc.metric(t, fmt.Sprintf(`brownie_sidecar_vault_logins_total{method=%q}`, method)); n < 3 {
				t.Errorf("logins %v", n)
			}
			if f := v.Stats().LoginFailures[method]; f != 0 {
				t.Errorf("Vault refused %d logins", f)
			}
			for _, secret := range []string{"jwt-1", "secret-1", "cred-2", "hvs."} {
				if strings.Contains(sc.logs.String(), secret) {
					t.Errorf("logs contain %q", secret)
				}
			}
		})
	}
}

func TestVaultKVModePicksUpAChangedBundle(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	v := vaultFor(t, srv, nil)
	issue := func() (crt, key []byte, serial string) {
		crt, key, err := srv.CA().Issue(brownietls.LeafOptions{CommonName: "brownie-fastapi-server", Client: true, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return crt, key, serialOf(t, crt)
	}
	crt1, key1, serial1 := issue()
	v.PutKV("brownie-metadata/certs", map[string]any{
		"client_cert": string(crt1), "client_key": string(key1), "ca_cert": string(srv.CA().CertPEM)})
	sc := startSidecar(t, srv, vaultEnv(t, v,
		"VAULT_TOKEN", v.CreateToken(vaulttest.TokenOptions{}), "VAULT_MODE", "kv",
		"VAULT_KV_POLL_INTERVAL", "1s", "POOL_RETIRE_INTERVAL", "100ms"))
	sc.waitCertReady(t, 15*time.Second)
	if s := sc.freshSerial(t); s != serial1 {
		t.Fatalf("serial %s, want %s", s, serial1)
	}

	// The bundle is replaced in KV (base64 of PEM, as the original system
	// stored it); new connections soon use it.
	crt2, key2, serial2 := issue()
	b64 := base64.StdEncoding.EncodeToString
	v.PutKV("brownie-metadata/certs", map[string]any{
		"client_cert": b64(crt2), "client_key": b64(key2), "ca_cert": b64(srv.CA().CertPEM)})
	waitFor(t, 20*time.Second, "a connection with the new KV certificate", func() bool {
		return sc.freshSerial(t) == serial2
	})
	if g := sc.metric(t, `brownie_sidecar_certificate_generation{source="vault"}`); g != 2 {
		t.Errorf("generation %v, want 2", g)
	}
}

func TestSignModeNeverSendsAPrivateKeyToVault(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	v := vaultFor(t, srv, nil)
	token := v.CreateToken(vaulttest.TokenOptions{})
	sc := startSidecar(t, srv, vaultEnv(t, v, "VAULT_TOKEN", token, "VAULT_CERT_TTL", "3s"))
	sc.waitCertReady(t, 15*time.Second)
	waitFor(t, 15*time.Second, "three certificates", func() bool { return len(v.Issued()) >= 3 })
	if s := sc.freshSerial(t); !issuedSerials(v)[s] {
		t.Fatalf("serial %s was not issued by Vault", s)
	}
	if vs := v.Violations(); len(vs) != 0 {
		t.Fatalf("Vault saw: %v", vs)
	}
	st := v.Stats()
	if st.Issues != 0 || st.Signs < 3 {
		t.Fatalf("stats %+v: want sign requests only", st)
	}
	for _, c := range v.Issued() {
		if c.Op != "sign" || c.CommonName != "brownie-fastapi-server" {
			t.Errorf("issued %+v", c)
		}
	}
	for _, r := range v.Requests() {
		if strings.Contains(r.Path, "/issue/") {
			t.Errorf("request %s %s", r.Method, r.Path)
		}
	}
	logs := sc.logs.String()
	if strings.Contains(logs, "PRIVATE KEY") || strings.Contains(logs, token) {
		t.Error("logs contain key material or the token")
	}
	if !strings.Contains(logs, `"certificate rotated"`) {
		t.Error(`no "certificate rotated" log entry`)
	}
}

func TestAVaultConfigurationWithProblemsStopsStartupListingThemAll(t *testing.T) {
	var stderr lockedBuffer
	code := runCommand(context.Background(), map[string]string{
		"VAULT_ENABLED": "true", "VAULT_MODE": "issue", "VAULT_AUTH": "approle",
		"LISTEN_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0",
	}, IO{Stdout: io.Discard, Stderr: &stderr}, nil)
	if code != ExitConfig {
		t.Fatalf("exit %d:\n%s", code, stderr.String())
	}
	for _, want := range []string{"VAULT_URL", "VAULT_PKI_ROLE", "VAULT_APPROLE_ROLE_ID"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("output lacks %s:\n%s", want, stderr.String())
		}
	}
}

func TestTheSidecarStartsNotReadyWhileVaultIsUnreachableAndBecomesReadyWhenItAnswers(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	v := vaultFor(t, srv, nil)
	token := v.CreateToken(vaulttest.TokenOptions{})
	v.SetSealed(true)
	sc := startSidecar(t, srv, vaultEnv(t, v, "VAULT_TOKEN", token, "VAULT_CERT_TTL", "1m"))
	code, body := sc.get(t, "/ready")
	if code != 503 || !strings.Contains(body, "no client certificate") {
		t.Fatalf("/ready %d %s", code, body)
	}
	if _, err := pgx.Connect(ctx10(t), sc.dsn("")); pgErrCode(err) != "28000" {
		t.Fatalf("connect without a certificate: %v", err)
	}
	v.SetSealed(false)
	sc.waitCertReady(t, 20*time.Second)
	if s := sc.freshSerial(t); !issuedSerials(v)[s] {
		t.Fatalf("serial %s", s)
	}
	if f := sc.metric(t, `brownie_sidecar_certificate_refresh_failures_by_reason_total{reason="vault_unavailable",source="vault"}`); f < 1 {
		t.Errorf("vault_unavailable failures %v", f)
	}
}
