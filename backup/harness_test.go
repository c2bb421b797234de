package backup

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/api/option"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/internal/testbin"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	if code == 0 {
		if err := goleak.Find(
			// Idle keep-alive connections of the cloud SDKs' shared HTTP
			// transports (the emulators' test clients) outlive their use.
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// workerPath builds the backup worker (cmd/brownie-backup) once and
// returns its path: every Manager of the tests runs it, as the sidecar
// does.
func workerPath(t testing.TB) string {
	t.Helper()
	p, err := testbin.Build("github.com/brownie/brownie-sidecar/cmd/brownie-backup")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// openLocalBucket opens a local destination directly, as the worker does,
// for tests that plant or inspect objects.
func openLocalBucket(t *testing.T, dir string) *blob.Bucket {
	t.Helper()
	b, err := fileblob.OpenBucket(dir, &fileblob.Options{CreateDir: true, NoTempDir: true, Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// localBackupNames lists the backups, complete or not, of a local
// destination: the directories named like backups that hold an object
// (deleting a backup's objects may leave its empty directory).
func localBackupNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if _, ok := ParseName(e.Name()); !ok || !e.IsDir() {
			continue
		}
		if objs, err := os.ReadDir(filepath.Join(dir, e.Name())); err == nil && len(objs) > 0 {
			names = append(names, e.Name())
		}
	}
	return names
}

// depsTarget is the make target that installs the storage emulators.
const depsTarget = "make deps-backup"

// cluster is two shards with known data, each a real Postgres primary
// with client-certificate authentication, sharing one development CA.
type cluster struct {
	srv       *pgtest.Server
	pgs       []*pgcluster.Cluster
	shards    []Shard
	certsFunc CertsFunc
}

// startCluster starts the two shards: shard-a from pgtest, shard-b a second
// cluster created with pgtest's certificates so that one client certificate
// opens both. Both get the Brownie schema, CREATEDB for the Brownie role
// (restores into new databases need it) and seeded data.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	return startClusterWith(t, nil, true)
}

// startClusterWith is startCluster with extra postgresql.conf settings, and
// without the seeded data unless seed.
func startClusterWith(t testing.TB, settings map[string]string, seed bool) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Settings: settings})

	base, err := os.MkdirTemp("", "backup-shard-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	log := new(pgtest.Buffer)
	b, err := pgcluster.Create(ctx, pgcluster.Config{
		Dir:        filepath.Join(base, "shard-b"),
		ServerCert: filepath.Join(srv.CertDir, "server.crt"),
		ServerKey:  filepath.Join(srv.CertDir, "server.key"),
		CACert:     filepath.Join(srv.CertDir, "ca.crt"),
		Settings:   settings,
		Log:        log,
	})
	if err != nil {
		t.Fatalf("create shard-b: %v\n%s", err, log)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatalf("start shard-b: %v\n%s", err, log)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Stop(ctx); err != nil {
			t.Errorf("stop shard-b: %v", err)
		}
	})
	if err := b.EnsureBrownieDatabase(ctx); err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		srv: srv,
		pgs: []*pgcluster.Cluster{srv.Primary, b},
		shards: []Shard{
			{Name: "shard-a", Host: "localhost", Port: srv.Primary.Port()},
			// The address, with the certificate's name checked: the
			// hostaddr path of the connection strings.
			{Name: "shard-b", Host: "127.0.0.1", Port: b.Port(), ServerName: "localhost"},
		},
	}
	src, err := brownietls.NewFileSource(brownietls.FileConfig{Dir: srv.CertDir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.certsFunc = CertsFromSource(src)
	for i, pg := range c.pgs {
		if _, err := pg.Exec(ctx, "postgres", `ALTER ROLE "brownie-fastapi-server" CREATEDB`); err != nil {
			t.Fatal(err)
		}
		if !seed {
			continue
		}
		if _, err := pg.Exec(ctx, pgcluster.BrownieDatabase, seedSQL(c.shards[i].Name)); err != nil {
			t.Fatalf("seed %s: %v", c.shards[i].Name, err)
		}
	}
	return c
}

// seedSQL fills the Brownie schema with rows that differ per shard, plus a
// table with a sequence, bytea and NULLs, all owned by the Brownie role.
func seedSQL(shard string) string {
	return strings.ReplaceAll(`
SET ROLE "brownie-fastapi-server";
INSERT INTO organizations (id, name, slug, description, is_active, config_json, settings, max_teams, max_users_per_team)
SELECT md5('SHARD org ' || i)::uuid, 'SHARD org ' || i, 'SHARD-org-' || i,
       CASE WHEN i % 3 = 0 THEN NULL ELSE 'it''s org ' || i END, i % 2 = 0,
       json_build_object('i', i, 'shard', 'SHARD'), NULL, 10, 100
FROM generate_series(1, 12) i;
INSERT INTO teams (id, org_id, name, slug, is_active, organization_id, permissions)
SELECT md5('SHARD team ' || o || '/' || j)::uuid, md5('SHARD org ' || o)::uuid, 'team ' || j, 'team-' || j,
       true, md5('SHARD org ' || o)::uuid, '["read","write"]'
FROM generate_series(1, 12) o, generate_series(1, 3) j;
INSERT INTO users (id, org_id, email, username, is_active, is_verified, team_id, role, organization_id, preferences)
SELECT md5('SHARD user ' || o || '/' || j || '/' || k)::uuid, md5('SHARD org ' || o)::uuid,
       'u' || o || '.' || j || '.' || k || '@SHARD.example', 'SHARD-u' || o || '-' || j || '-' || k, true, k % 2 = 1,
       md5('SHARD team ' || o || '/' || j)::uuid, (ARRAY['ADMIN','MEMBER','VIEWER'])[1 + k % 3]::userrole,
       md5('SHARD org ' || o)::uuid, '{"theme":"dark"}'
FROM generate_series(1, 12) o, generate_series(1, 3) j, generate_series(1, 4) k;
INSERT INTO incidents (id, org_id, version, title, description, status, priority, started_at, tags, team_id, organization_id)
SELECT md5('SHARD incident ' || o || '/' || j || '/' || k)::uuid, md5('SHARD org ' || o)::uuid, 1,
       'incident ' || k || E' with \ttab and ünïcode', repeat('details ', k),
       (ARRAY['OPEN','IN_PROGRESS','RESOLVED','CLOSED','CANCELLED'])[1 + k % 5]::incidentstatus,
       (ARRAY['LOW','MEDIUM','HIGH','CRITICAL'])[1 + k % 4]::incidentpriority,
       timestamptz '2025-01-01 00:00:00+00' + k * interval '1 hour', '["db"]',
       md5('SHARD team ' || o || '/' || j)::uuid, md5('SHARD org ' || o)::uuid
FROM generate_series(1, 12) o, generate_series(1, 3) j, generate_series(1, 8) k;
INSERT INTO stats (id, org_id, metric_name, metric_type, value, "timestamp", organization_id)
SELECT md5('SHARD stat ' || o || '/' || k)::uuid, md5('SHARD org ' || o)::uuid, 'latency', 'gauge', k * 1.5,
       timestamptz '2025-01-01 00:00:00+00' + k * interval '1 minute', md5('SHARD org ' || o)::uuid
FROM generate_series(1, 12) o, generate_series(1, 25) k;
CREATE TABLE backup_probe (id bigserial PRIMARY KEY, payload text, data bytea, n numeric);
INSERT INTO backup_probe (payload, data, n)
SELECT CASE WHEN i % 7 = 0 THEN NULL ELSE repeat('SHARD', i) END, decode(md5(i::text), 'hex'), i / 3.0
FROM generate_series(1, 300) i;
`, "SHARD", shard)
}

// fingerprint describes every public table (row count and a hash of the
// sorted rows) and sequence of database db on pg, one line each.
func fingerprint(t *testing.T, pg *pgcluster.Cluster, db string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := pg.Exec(ctx, db, `
SELECT 'table ' || tablename || ' ' || (xpath('/row/c/text()', query_to_xml(format(
         'SELECT count(*) || '' '' || coalesce(md5(string_agg(t::text, E''\n'' ORDER BY t::text)), ''-'') AS c FROM public.%I t',
         tablename), false, true, '')))[1]::text
FROM pg_tables WHERE schemaname = 'public'
UNION ALL
SELECT 'sequence ' || sequencename || ' ' || coalesce(last_value::text, 'null')
FROM pg_sequences WHERE schemaname = 'public'
UNION ALL
SELECT 'type ' || typname || ' ' || (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid)
FROM pg_type t WHERE typtype = 'e'
ORDER BY 1`)
	if err != nil {
		t.Fatalf("fingerprint %s: %v", db, err)
	}
	return out
}

// assertSameData checks that database db on every shard holds exactly what
// the live database holds.
func (c *cluster) assertSameData(t *testing.T, db string) {
	t.Helper()
	for i, pg := range c.pgs {
		want := fingerprint(t, pg, pgcluster.BrownieDatabase)
		got := fingerprint(t, pg, db)
		if !strings.Contains(want, "table backup_probe 300 ") || !strings.Contains(want, "table users 144 ") {
			t.Fatalf("%s: source is not seeded:\n%s", c.shards[i].Name, want)
		}
		if got != want {
			t.Errorf("%s: database %s differs from %s:\n got:\n%s\nwant:\n%s", c.shards[i].Name, db, pgcluster.BrownieDatabase, got, want)
		}
	}
}

// databaseExists reports whether db exists on pg.
func databaseExists(t *testing.T, pg *pgcluster.Cluster, db string) bool {
	t.Helper()
	out, err := pg.Exec(t.Context(), "postgres", fmt.Sprintf("SELECT count(*) FROM pg_database WHERE datname = '%s'", db))
	if err != nil {
		t.Fatal(err)
	}
	return out == "1"
}

// certs returns the client certificate as the sidecar gives it: from a
// tls.FileSource on the development certificates, through CertsFromSource.
func (c *cluster) certs() (certPEM, keyPEM, caPEM []byte, err error) {
	return c.certsFunc()
}

// lockKeys gives every test its own advisory lock key unless it shares one
// on purpose, so that tests do not elect against each other.
var lockKeys atomic.Int64

// newManager builds a Manager for the cluster with cfg, a registry of its
// own, the worker and, unless deps says otherwise, an advisory lock key of
// its own.
func (c *cluster) newManager(t testing.TB, cfg config.Backup, deps Deps) (*Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 2
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.CompressionLevel == 0 {
		cfg.CompressionLevel = -1
	}
	if cfg.Schedule == "" {
		cfg.Schedule = config.BackupScheduleOff
	}
	if deps.Log == nil {
		deps.Log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	deps.Registerer = reg
	deps.Version = "test"
	if deps.Shards == nil {
		deps.Shards = func() []Shard { return c.shards }
	}
	deps.Database = pgcluster.BrownieDatabase
	deps.User = pgcluster.BrownieRole
	deps.SSLMode = config.SSLVerifyFull
	deps.Certs = c.certs
	if deps.LockKey == 0 {
		deps.LockKey = 1000 + lockKeys.Add(1)
	}
	deps.Worker = workerPath(t)
	m, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m, reg
}

// findBinary finds an emulator on PATH or in $(go env GOPATH)/bin, failing
// the test with the make target that installs it.
func findBinary(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for dir := range strings.SplitSeq(strings.TrimSpace(string(out)), string(os.PathListSeparator)) {
			p := filepath.Join(dir, "bin", name)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				return p
			}
		}
	}
	t.Fatalf("%s is not installed (not on PATH nor in $(go env GOPATH)/bin); install the storage emulators with `%s`", name, depsTarget)
	return ""
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProcess runs an emulator in a process group of its own, stopped and
// waited for by a cleanup; its output goes to a buffer shown on failure.
func startProcess(t *testing.T, env []string, dir string, path string, args ...string) (*pgtest.Buffer, <-chan struct{}) {
	t.Helper()
	out := new(pgtest.Buffer)
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", filepath.Base(path), err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), out)
		}
	})
	return out, exited
}

// waitReady polls ready every 50 ms for at most 60 s, failing early if the
// process exits.
func waitReady(t *testing.T, what string, out *pgtest.Buffer, exited <-chan struct{}, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ready() {
		select {
		case <-exited:
			t.Fatalf("%s exited before it was ready:\n%s", what, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 60s:\n%s", what, out)
		}
	}
}

func tcpReady(addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
}

func httpReady(url string) func() bool {
	return func() bool {
		client := &http.Client{Timeout: 2 * time.Second}
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		client.CloseIdleConnections()
		return resp.StatusCode < 500
	}
}

// baseEnv is the environment emulators run with: nothing inherited but PATH
// and HOME, so no credentials or endpoints leak in.
func baseEnv(home string) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
}

const (
	testAccessKey = "brownie-test-access"
	testSecretKey = "brownie-test-secret-key-0123456789"
	testBucket    = "brownie-backups"
	// azuriteKey is Azurite's well-known development account key.
	azuriteAccount = "devstoreaccount1"
	azuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// startVersityGW starts versitygw with the posix backend and a bucket, and
// returns the configuration of an s3 destination in it.
func startVersityGW(t *testing.T) config.Backup {
	t.Helper()
	bin := findBinary(t, "versitygw")
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "gw"), 0o700); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	out, exited := startProcess(t, baseEnv(root), root, bin,
		"--port", addr, "--access", testAccessKey, "--secret", testSecretKey, "--region", "us-east-1", "--quiet",
		"posix", filepath.Join(root, "gw"))
	waitReady(t, "versitygw", out, exited, tcpReady(addr))

	endpoint := "http://" + addr
	client := s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(testAccessKey, testSecretKey, ""),
	})
	if _, err := client.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(testBucket)}); err != nil {
		t.Fatalf("create bucket: %v\n%s", err, out)
	}
	return config.Backup{
		Provider: config.BackupS3, Destination: "s3://" + testBucket + "/cluster-1/backups",
		AccessKey: testAccessKey, SecretKey: testSecretKey, Endpoint: endpoint, Region: "us-east-1",
		S3ForcePathStyle: true,
	}
}

// startFakeGCS starts fake-gcs-server over HTTP with a bucket, and returns
// the configuration of a gcs destination in it.
func startFakeGCS(t *testing.T) config.Backup {
	t.Helper()
	bin := findBinary(t, "fake-gcs-server")
	root := t.TempDir()
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	out, exited := startProcess(t, baseEnv(root), root, bin,
		"-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port), "-backend", "memory",
		"-public-host", addr, "-external-url", "http://"+addr, "-log-level", "warn")
	waitReady(t, "fake-gcs-server", out, exited, httpReady("http://"+addr+"/storage/v1/b"))

	client, err := storage.NewClient(t.Context(), option.WithoutAuthentication(),
		option.WithEndpoint("http://"+addr+"/storage/v1/"), storage.WithJSONReads())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.Bucket(testBucket).Create(t.Context(), "brownie-test", nil); err != nil {
		t.Fatalf("create bucket: %v\n%s", err, out)
	}
	return config.Backup{Provider: config.BackupGCS, Destination: "gs://" + testBucket + "/backups", GCSEmulatorHost: addr}
}

// startAzurite starts Azurite's blob service with a container, and returns
// the configuration of an azure destination in it.
func startAzurite(t *testing.T) config.Backup {
	t.Helper()
	bin := findBinary(t, "azurite-blob")
	root := t.TempDir()
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	out, exited := startProcess(t, baseEnv(root), root, bin,
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port), "--location", root,
		"--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent")
	waitReady(t, "azurite-blob", out, exited, tcpReady(addr))

	endpoint := "http://" + addr + "/" + azuriteAccount
	cred, err := container.NewSharedKeyCredential(azuriteAccount, azuriteKey)
	if err != nil {
		t.Fatal(err)
	}
	client, err := container.NewClientWithSharedKeyCredential(endpoint+"/"+testBucket, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Create(t.Context(), nil); err != nil {
		t.Fatalf("create container: %v\n%s", err, out)
	}
	return config.Backup{
		Provider: config.BackupAzure, Destination: testBucket + "/brownie",
		AzureAccount: azuriteAccount, AzureKey: azuriteKey, Endpoint: endpoint,
	}
}

// localConfig returns the configuration of a local destination in a fresh
// directory.
func localConfig(t *testing.T) config.Backup {
	return config.Backup{Provider: config.BackupLocal, Destination: filepath.Join(t.TempDir(), "backups")}
}

// clock is a settable test clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
