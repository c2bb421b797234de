package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/admin"
	"github.com/brownie/brownie-sidecar/backup"
	"github.com/brownie/brownie-sidecar/internal/config"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// cliBackups is a fake admin.Backups for the CLI tests: the real backups
// are tested by the backup package against real storage and Postgres.
type cliBackups struct {
	mu        sync.Mutex
	restores  []backup.RestoreRequest
	failShard bool
}

var cliManifest = backup.Manifest{Name: "brownie-20261127T020000Z", Database: "brownie_metadata", TotalBytes: 42,
	Shards: []backup.ShardManifest{{Shard: "shard-0", Object: "shard-0.dump", Bytes: 42, SHA256: "ab"}}}

func (f *cliBackups) Create(context.Context) (*backup.Manifest, error) {
	m := cliManifest
	return &m, nil
}

func (f *cliBackups) List(context.Context) ([]backup.Manifest, error) {
	return []backup.Manifest{cliManifest}, nil
}

func (f *cliBackups) Get(_ context.Context, name string) (*backup.Manifest, error) {
	if name != cliManifest.Name {
		return nil, fmt.Errorf("%q: %w", name, backup.ErrNotFound)
	}
	m := cliManifest
	return &m, nil
}

func (f *cliBackups) Restore(_ context.Context, req backup.RestoreRequest) (*backup.RestoreResult, error) {
	f.mu.Lock()
	f.restores = append(f.restores, req)
	f.mu.Unlock()
	res := &backup.RestoreResult{BackupName: req.BackupName, Database: req.TargetDatabase, OK: !f.failShard,
		Shards: []backup.ShardRestoreResult{{Shard: "shard-0", OK: !f.failShard}}}
	if f.failShard {
		res.Shards[0].Error = "pg_restore: exit status 1"
	}
	return res, nil
}

func (f *cliBackups) Status() backup.Status { return backup.Status{Provider: "local"} }

func (f *cliBackups) restoreCalls() []backup.RestoreRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]backup.RestoreRequest(nil), f.restores...)
}

const cliToken = "cli-t0ken"

// adminServer serves the real admin handler over HTTP with fake backups
// (nil for none) and returns its host:port.
func adminServer(t *testing.T, b admin.Backups) string {
	t.Helper()
	deps := admin.Deps{Token: cliToken}
	if b != nil {
		deps.Backups = b
	}
	srv := httptest.NewServer(admin.New(deps))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// cli runs `brownie-sidecar backup args...` through Main.
func cli(t *testing.T, environ map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code = Main(ctx, append([]string{"brownie-sidecar", "backup"}, args...), environ, IO{Stdout: &o, Stderr: &e})
	return code, o.String(), e.String()
}

func TestCLIBackupCommandsCallTheAdminAPI(t *testing.T) {
	fake := &cliBackups{}
	addr := adminServer(t, fake)
	env := map[string]string{"ADMIN_ADDR": addr, "ADMIN_TOKEN": cliToken}

	code, out, errOut := cli(t, env, "list")
	var list struct{ Backups []backup.Manifest }
	if code != ExitOK || json.Unmarshal([]byte(out), &list) != nil || len(list.Backups) != 1 || errOut != "" {
		t.Fatalf("list: %d %q %q", code, out, errOut)
	}
	if !strings.Contains(out, "\n  \"backups\": [") {
		t.Errorf("list output is not indented:\n%s", out)
	}
	code, out, _ = cli(t, env, "create")
	if code != ExitOK || !strings.Contains(out, `"name": "brownie-20261127T020000Z"`) {
		t.Fatalf("create: %d %q", code, out)
	}
	code, out, _ = cli(t, env, "show", "brownie-20261127T020000Z")
	if code != ExitOK || !strings.Contains(out, `"sha256": "ab"`) {
		t.Fatalf("show: %d %q", code, out)
	}
	code, out, errOut = cli(t, env, "show", "brownie-19700101T000000Z")
	if code != ExitFail || out != "" || !strings.Contains(errOut, "404") || !strings.Contains(errOut, "backup not found") {
		t.Fatalf("show unknown: %d %q %q", code, out, errOut)
	}
	// Flags may come before or after the backup name.
	for _, args := range [][]string{
		{"restore", "brownie-20261127T020000Z", "--into", "restored"},
		{"restore", "--into=restored", "brownie-20261127T020000Z"},
	} {
		code, out, errOut = cli(t, env, args...)
		if code != ExitOK || !strings.Contains(out, `"ok": true`) {
			t.Fatalf("%v: %d %q %q", args, code, out, errOut)
		}
	}
	code, _, _ = cli(t, env, "restore", "brownie-20261127T020000Z", "--confirm", "brownie-20261127T020000Z")
	if code != ExitOK {
		t.Fatalf("confirmed in-place restore: %d", code)
	}
	want := []backup.RestoreRequest{
		{BackupName: "brownie-20261127T020000Z", TargetDatabase: "restored"},
		{BackupName: "brownie-20261127T020000Z", TargetDatabase: "restored"},
		{BackupName: "brownie-20261127T020000Z", Confirm: "brownie-20261127T020000Z"},
	}
	if got := fake.restoreCalls(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restores %+v, want %+v", got, want)
	}
}

func TestCLIRestoreInPlaceWithoutConfirmIsRefusedAndRestoresNothing(t *testing.T) {
	fake := &cliBackups{}
	env := map[string]string{"ADMIN_ADDR": adminServer(t, fake), "ADMIN_TOKEN": cliToken}
	code, out, errOut := cli(t, env, "restore", "brownie-20261127T020000Z")
	if code != ExitFail || out != "" || !strings.Contains(errOut, "400") || !strings.Contains(errOut, "confirm") {
		t.Fatalf("%d %q %q", code, out, errOut)
	}
	code, _, errOut = cli(t, env, "restore", "brownie-20261127T020000Z", "--confirm", "yes")
	if code != ExitFail || !strings.Contains(errOut, "confirm") {
		t.Fatalf("wrong confirm: %d %q", code, errOut)
	}
	if calls := fake.restoreCalls(); len(calls) != 0 {
		t.Fatalf("the API was asked to restore: %+v", calls)
	}
}

func TestCLIShowsAFailedRestoreAndExits1(t *testing.T) {
	fake := &cliBackups{failShard: true}
	env := map[string]string{"ADMIN_ADDR": adminServer(t, fake), "ADMIN_TOKEN": cliToken}
	code, out, errOut := cli(t, env, "restore", "brownie-20261127T020000Z", "--into", "restored")
	if code != ExitFail || !strings.Contains(out, `"error": "pg_restore: exit status 1"`) || !strings.Contains(errOut, "500") {
		t.Fatalf("%d\nstdout %s\nstderr %s", code, out, errOut)
	}
}

func TestCLIUsesTheTokenAndAddressOfTheConfiguration(t *testing.T) {
	addr := adminServer(t, &cliBackups{})
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  "+cliToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(addr, ":")
	for name, env := range map[string]map[string]string{
		"token file":   {"ADMIN_ADDR": addr, "ADMIN_TOKEN_FILE": tokenFile},
		"METRICS_PORT": {"ADMIN_ADDR": "127.0.0.1:1", "METRICS_PORT": port, "ADMIN_TOKEN": cliToken},
		"--addr":       {"ADMIN_ADDR": "127.0.0.1:1", "ADMIN_TOKEN": cliToken},
	} {
		args := []string{"list"}
		if name == "--addr" {
			args = []string{"--addr", addr, "list"}
		}
		if code, _, errOut := cli(t, env, args...); code != ExitOK {
			t.Errorf("%s: %d %s", name, code, errOut)
		}
	}
	code, _, errOut := cli(t, map[string]string{"ADMIN_ADDR": addr, "ADMIN_TOKEN": "wrong"}, "list")
	if code != ExitFail || !strings.Contains(errOut, "401") || strings.Contains(errOut, "wrong") {
		t.Fatalf("wrong token: %d %q", code, errOut)
	}
	code, _, errOut = cli(t, map[string]string{"ADMIN_ADDR": addr}, "list")
	if code != ExitFail || !strings.Contains(errOut, "401") {
		t.Fatalf("no token: %d %q", code, errOut)
	}
	if err := os.WriteFile(tokenFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = cli(t, map[string]string{"ADMIN_ADDR": addr, "ADMIN_TOKEN_FILE": tokenFile}, "list")
	if code != ExitConfig || !strings.Contains(errOut, "ADMIN_TOKEN_FILE") {
		t.Fatalf("empty token file: %d %q", code, errOut)
	}
}

func TestCLIErrors(t *testing.T) {
	env := map[string]string{"ADMIN_ADDR": "127.0.0.1:8001"}
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"show"},
		{"restore"},
		{"list", "extra"},
		{"list", "--into", "x"},
		{"list", "--nope"},
	} {
		if code, _, errOut := cli(t, env, args...); code != ExitConfig || !strings.Contains(errOut, "usage:") {
			t.Errorf("%v: %d %q", args, code, errOut)
		}
	}
	if code, _, errOut := cli(t, map[string]string{"ADMIN_ADDR": "off"}, "list"); code != ExitConfig || !strings.Contains(errOut, "--addr") {
		t.Errorf("admin port off: %d %q", code, errOut)
	}
	// The sidecar's own configuration rules apply: off loopback, a token.
	if code, _, errOut := cli(t, map[string]string{}, "list"); code != ExitConfig || !strings.Contains(errOut, "ADMIN_TOKEN") {
		t.Errorf("default configuration without a token: %d %q", code, errOut)
	}
	// Nothing listens on port 1.
	if code, _, errOut := cli(t, env, "--addr", "127.0.0.1:1", "list"); code != ExitFail || !strings.Contains(errOut, "unreachable") {
		t.Errorf("unreachable: %d %q", code, errOut)
	}
	// Backups not configured on the sidecar.
	if code, _, errOut := cli(t, map[string]string{"ADMIN_ADDR": adminServer(t, nil), "ADMIN_TOKEN": cliToken}, "list"); code != ExitFail ||
		!strings.Contains(errOut, "503") || !strings.Contains(errOut, "backups are not configured") {
		t.Errorf("no backups: %d %q", code, errOut)
	}
}

func TestCLIAdminAddressDefaultsToLoopback(t *testing.T) {
	for _, tc := range []struct {
		admin    config.Admin
		override string
		want     string
	}{
		{config.Admin{Addr: ":8001"}, "", "http://127.0.0.1:8001"},
		{config.Admin{Addr: "0.0.0.0:8001", MetricsPort: "9100"}, "", "http://127.0.0.1:9100"},
		{config.Admin{Addr: "[::]:8001"}, "", "http://[::1]:8001"},
		{config.Admin{Addr: "10.0.0.5:8001"}, "", "http://10.0.0.5:8001"},
		{config.Admin{Addr: ":8001"}, "sidecar.internal:9000", "http://sidecar.internal:9000"},
		{config.Admin{Addr: ":8001"}, "https://sidecar.internal:9000/", "https://sidecar.internal:9000"},
	} {
		got, err := adminBaseURL(tc.admin, tc.override)
		if err != nil || got != tc.want {
			t.Errorf("adminBaseURL(%+v, %q) = %q, %v; want %q", tc.admin, tc.override, got, err, tc.want)
		}
	}
}

// TestAdminPortIsWiredIntoTheSidecar runs the sidecar with no reachable
// Postgres (the admin port does not need one) and checks what Run gives the
// admin handler: the token from ADMIN_TOKEN_FILE, /startup, the /status
// sections, METRICS_ENABLED, and no backups yet.
func TestAdminPortIsWiredIntoTheSidecar(t *testing.T) {
	certDir := t.TempDir()
	if err := brownietls.WriteDevCerts(certDir, "brownie-fastapi-server"); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(cliToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, metrics := range []bool{true, false} {
		env := map[string]string{
			"DB_PORT": "1", "LOCAL_CERT_DIR": certDir, "LISTEN_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0",
			"ADMIN_TOKEN_FILE": tokenFile, "METRICS_ENABLED": fmt.Sprint(metrics), "SHUTDOWN_TIMEOUT": "1s",
			"LOG_LEVEL": "debug",
		}
		logs := &lockedBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan Started, 1)
		done := make(chan int, 1)
		go func() {
			done <- runCommand(ctx, env, IO{Stdout: io.Discard, Stderr: logs}, func(st Started) { started <- st })
		}()
		var base string
		select {
		case st := <-started:
			base = "http://" + st.AdminAddr.String()
		case code := <-done:
			cancel()
			t.Fatalf("exit %d during startup:\n%s", code, logs)
		case <-time.After(20 * time.Second):
			cancel()
			t.Fatalf("no start:\n%s", logs)
		}
		get := func(path, tok string) (int, map[string]json.RawMessage) {
			req, _ := http.NewRequest("GET", base+path, nil)
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]json.RawMessage
			data, _ := io.ReadAll(resp.Body)
			_ = json.Unmarshal(data, &body)
			return resp.StatusCode, body
		}
		if code, _ := get("/startup", ""); code != 200 {
			t.Errorf("/startup %d", code)
		}
		if code, _ := get("/status", ""); code != 401 {
			t.Errorf("/status without the token: %d", code)
		}
		code, st := get("/status", cliToken)
		if code != 200 {
			t.Fatalf("/status %d", code)
		}
		var cert struct {
			Serial          string    `json:"serial"`
			NotAfter        time.Time `json:"not_after"`
			SecondsToExpiry int64     `json:"seconds_to_expiry"`
			Source          string    `json:"source"`
		}
		if err := json.Unmarshal(st["certificate"], &cert); err != nil || cert.Serial == "" || cert.Source != "file" ||
			cert.SecondsToExpiry <= 0 || cert.NotAfter.IsZero() {
			t.Errorf("certificate section %s", st["certificate"])
		}
		var sessions struct {
			Active     *int `json:"active"`
			MaxClients int  `json:"max_clients"`
		}
		if err := json.Unmarshal(st["sessions"], &sessions); err != nil || sessions.Active == nil || sessions.MaxClients != 10000 {
			t.Errorf("sessions section %s", st["sessions"])
		}
		for _, key := range []string{"pools", "version", "uptime_seconds"} {
			if _, ok := st[key]; !ok {
				t.Errorf("/status lacks %s", key)
			}
		}
		if string(st["backups"]) != `{"configured":false}` {
			t.Errorf("backups section %s", st["backups"])
		}
		if code, _ := get("/backup/list", cliToken); code != http.StatusServiceUnavailable {
			t.Errorf("/backup/list with no backups configured: %d", code)
		}
		wantMetrics := http.StatusOK
		if !metrics {
			wantMetrics = http.StatusNotFound
		}
		if code, _ := get("/metrics", ""); code != wantMetrics {
			t.Errorf("METRICS_ENABLED=%v: /metrics %d", metrics, code)
		}
		cancel()
		select {
		case code := <-done:
			if code != ExitOK {
				t.Errorf("exit %d", code)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no stop:\n%s", logs)
		}
		if strings.Contains(logs.String(), cliToken) {
			t.Fatalf("the token is in the logs")
		}
	}
}

// TestAdminRefusesToStartOffLoopbackWithoutAToken: the configuration error
// names the variables and the process exits 2 before listening.
func TestAdminRefusesToStartOffLoopbackWithoutAToken(t *testing.T) {
	var stderr lockedBuffer
	code := runCommand(context.Background(), map[string]string{"LISTEN_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "0.0.0.0:0"},
		IO{Stdout: io.Discard, Stderr: &stderr}, nil)
	if code != ExitConfig || !strings.Contains(stderr.String(), "ADMIN_TOKEN") || !strings.Contains(stderr.String(), "ADMIN_ADDR") {
		t.Fatalf("exit %d:\n%s", code, stderr.String())
	}
}
