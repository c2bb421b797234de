package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/admin"
	"github.com/brownie/brownie-sidecar/backup"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/testbin"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// Secrets planted in the configuration and the environment: none may
// reach the worker's arguments or environment.
const (
	secretKey  = "s3-secret-d41d8cd98f00"
	azureKey   = "YXp1cmUta2V5LXNlY3JldA=="
	azureConn  = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=conn-secret-77aa"
	adminToken = "admin-token-secret-9f1c"
)

// protocolManager is a Manager on a local destination, with one shard
// whose primary does not listen, a real client certificate, storage
// secrets in its configuration and an environment holding the sidecar's
// variables and a cloud's own.
func protocolManager(t *testing.T, dest string, shards func() []backup.Shard, worker string, grace time.Duration) *backup.Manager {
	t.Helper()
	if worker == "" {
		var err error
		if worker, err = testbin.Build("github.com/brownie/brownie-sidecar/cmd/brownie-backup"); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := brownietls.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(brownietls.LeafOptions{CommonName: "brownie-fastapi-server", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if shards == nil {
		shards = func() []backup.Shard {
			return []backup.Shard{{Name: "shard-a", Host: "127.0.0.1", Port: closedPort(t)}}
		}
	}
	pgBin := os.Getenv("PG_BINDIR")
	if pgBin == "" {
		matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		if len(matches) > 0 {
			pgBin = matches[len(matches)-1]
		}
	}
	environ := map[string]string{
		"BACKUP_PROVIDER": "local", "BACKUP_SECRET_KEY": secretKey, "AZURE_STORAGE_KEY": azureKey,
		"AZURE_STORAGE_CONNECTION_STRING": azureConn, "ADMIN_TOKEN": adminToken,
		"AWS_REGION": "eu-west-3", "PATH": "/usr/bin:/bin",
	}
	m, err := backup.New(config.Backup{
		Provider: config.BackupLocal, Destination: dest, Schedule: config.BackupScheduleOff,
		Concurrency: 1, Timeout: time.Minute, CompressionLevel: -1, PGBinDir: pgBin,
		AccessKey: "AKIA", SecretKey: secretKey, AzureKey: azureKey, AzureConnectionString: azureConn,
	}, backup.Deps{
		Version: "test", Shards: shards, Database: "brownie_metadata", User: "brownie-fastapi-server",
		SSLMode: config.SSLVerifyFull, Worker: worker, WorkerEnv: backup.WorkerEnviron(environ), WorkerGrace: grace,
		Certs: func() ([]byte, []byte, []byte, error) { return certPEM, keyPEM, ca.CertPEM, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// closedPort returns a loopback port where nothing listens.
func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func call(t *testing.T, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), method, path, r))
	return rec.Code, rec.Body.String()
}

func TestWorkerErrorsReachTheAdminAPIWithTheirStatus(t *testing.T) {
	dest := t.TempDir()
	m := protocolManager(t, dest, nil, "", 0)
	h := admin.New(admin.Deps{Backups: m})

	// A backup whose shard object does not match its manifest.
	const name = "brownie-20261127T020000Z"
	if err := os.MkdirAll(filepath.Join(dest, name), 0o700); err != nil {
		t.Fatal(err)
	}
	man := backup.Manifest{Name: name, Database: "brownie_metadata", TotalBytes: 4, Format: backup.FormatCustom,
		Shards: []backup.ShardManifest{{Shard: "shard-a", Object: "shard-a.dump", Bytes: 4, SHA256: strings.Repeat("0", 64)}}}
	data, _ := json.Marshal(man)
	for file, content := range map[string][]byte{"manifest.json": data, "shard-a.dump": []byte("abcd")} {
		if err := os.WriteFile(filepath.Join(dest, name, file), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/backup/list", "", http.StatusOK, name},
		{"GET", "/backup/" + name, "", http.StatusOK, `"shard-a.dump"`},
		{"GET", "/backup/brownie-20000101T000000Z", "", http.StatusNotFound, "backup not found"},
		{"POST", "/backup/restore", `{"backup_name":"brownie-20000101T000000Z","target_database":"r"}`, http.StatusNotFound, "backup not found"},
		{"POST", "/backup/restore", `{"backup_name":"` + name + `","target_database":"r"}`, http.StatusUnprocessableEntity, "does not match its manifest"},
		// The worker cannot take the backup lock: its shard's primary
		// does not listen.
		{"POST", "/backup/create", "", http.StatusInternalServerError, "backup lock on shard shard-a"},
	} {
		code, body := call(t, h, tc.method, tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s = %d %s; want %d with %q", tc.method, tc.path, code, body, tc.code, tc.want)
		}
		for _, s := range []string{secretKey, azureKey, "conn-secret", "PRIVATE KEY"} {
			if strings.Contains(body, s) {
				t.Errorf("%s %s shows a secret: %s", tc.method, tc.path, body)
			}
		}
	}
	if st := m.Status(); st.LastFailure == "" || st.Running {
		t.Errorf("Status after a failed create = %+v", st)
	}
}

func TestAWorkerThatCrashesFailsTheOperation(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "brownie-backup")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'panic: storage driver exploded' >&2\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	m := protocolManager(t, t.TempDir(), nil, fake, 0)
	h := admin.New(admin.Deps{Backups: m})
	code, body := call(t, h, "POST", "/backup/create", "")
	if code != http.StatusInternalServerError || !strings.Contains(body, "exit status 3") || !strings.Contains(body, "storage driver exploded") {
		t.Errorf("create with a crashing worker = %d %s", code, body)
	}
	if code, body := call(t, h, "GET", "/backup/list", ""); code != http.StatusInternalServerError {
		t.Errorf("list with a crashing worker = %d %s", code, body)
	}
}

// workerChild finds the running worker started by this process.
func workerChild(worker string) (pid int, ok bool) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == worker {
			return p, true
		}
	}
	return 0, false
}

func TestTheWorkerGetsNoSecretsOnItsCommandLineOrEnvironmentAndDiesWithItsOperation(t *testing.T) {
	worker, err := testbin.Build("github.com/brownie/brownie-sidecar/cmd/brownie-backup")
	if err != nil {
		t.Fatal(err)
	}
	// The worker asks for the shards when the backup starts; the answer is
	// held back until the test has looked at the running worker.
	asked := make(chan struct{})
	release := make(chan struct{})
	shards := func() []backup.Shard {
		close(asked)
		<-release
		return nil
	}
	m := protocolManager(t, t.TempDir(), shards, worker, 2*time.Second)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := m.Create(ctx)
		done <- err
	}()
	select {
	case <-asked:
	case err := <-done:
		t.Fatalf("Create returned before the worker asked for the shards: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the worker never asked for the shards")
	}
	pid, ok := workerChild(worker)
	if !ok {
		t.Fatal("no worker process found")
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"); len(got) != 2 || got[1] != "serve" {
		t.Errorf("worker command line = %q, want [worker serve]", got)
	}
	for _, s := range []string{secretKey, azureKey, "conn-secret", adminToken, "PRIVATE KEY", "BACKUP_", "AZURE_STORAGE"} {
		if bytes.Contains(cmdline, []byte(s)) || bytes.Contains(environ, []byte(s)) {
			t.Errorf("the worker's command line or environment holds %q:\n%q\n%q", s, cmdline, environ)
		}
	}
	if !bytes.Contains(environ, []byte("AWS_REGION=eu-west-3")) || !bytes.Contains(environ, []byte("PATH=/usr/bin:/bin")) {
		t.Errorf("the worker's environment lacks the variables the clouds' credential chains read: %q", environ)
	}

	// Cancelling the operation stops the worker, although the sidecar
	// has not answered its call.
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still runs 10 s after its operation was cancelled", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Errorf("cancelled Create = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Create did not return after its context was cancelled")
	}
}

func TestAWorkerThatIgnoresSIGTERMIsKilledAfterTheGracePeriod(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "brownie-backup")
	// A worker that reads its request and then never answers, ignoring
	// SIGTERM.
	if err := os.WriteFile(fake, []byte("#!/bin/sh\ntrap '' TERM\nread line\nwhile :; do sleep 0.05; done\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	m := protocolManager(t, t.TempDir(), nil, fake, 500*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := m.List(ctx); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("List with a hung worker = %v, want it stopped", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("List took %v to give up on a hung worker", d)
	}
}
