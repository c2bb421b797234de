package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/brownie/brownie-sidecar/internal/app"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

var (
	runSuite = flag.Bool("conformance", false, "run pgx's own test suite through the sidecar (make test-conformance)")
	modes    = flag.String("modes", "session,transaction", "pool modes to run the suite in")
	direct   = flag.Bool("direct", false, "also run the suite straight against Postgres, for reference (not compared)")
	suiteP   = flag.Int("suite-p", 2, "go test -p of the suite")
	keepJSON = flag.String("keep-json", "", "directory to keep each run's go test -json output in")
)

const (
	pgxModule = "github.com/jackc/pgx/v5"
	// suiteDB is the database the suite runs in; the sidecar serves it.
	suiteDB = "pgx_test"
	// suiteTimeout bounds one run of the suite (go test -timeout).
	suiteTimeout = 8 * time.Minute
)

// TestPgxSuiteThroughSidecar runs pgx's own test suite, at the version the
// sidecar depends on, through the sidecar in every pool mode against a real
// cert-only Postgres, and compares the failing top-level tests with
// testdata/pgx-expected-failures.txt: a failure not listed fails, and so
// does a listed test that passed (it must be removed from the list).
func TestPgxSuiteThroughSidecar(t *testing.T) {
	if !*runSuite {
		t.Skip("pgx's suite runs with -conformance (make test-conformance)")
	}
	f, err := os.Open("testdata/pgx-expected-failures.txt")
	if err != nil {
		t.Fatal(err)
	}
	expected, err := ParseExpected(f)
	f.Close()
	if err != nil {
		t.Fatalf("pgx-expected-failures.txt: %v", err)
	}
	suiteDir := pgxDir(t)
	srv := pgtest.Start(t, pgtest.Options{})
	setupSuiteDatabase(t, srv, suiteDir)

	if *direct {
		res, _ := runPgxSuite(t, suiteDir, srv.DSN(srv.Primary, suiteDB), "direct")
		t.Logf("direct: %d pass, %d fail, %d skip; failed: %s", res.Count(Pass), res.Count(Fail), res.Count(Skip), strings.Join(res.Failed(), " "))
	}
	for _, mode := range strings.Split(*modes, ",") {
		t.Run(mode, func(t *testing.T) {
			dsn := startSidecar(t, srv, mode)
			res, out := runPgxSuite(t, suiteDir, dsn, mode)
			t.Logf("%s mode: %d pass, %d fail, %d skip", mode, res.Count(Pass), res.Count(Fail), res.Count(Skip))
			for _, name := range res.Failed() {
				if e, ok := expected[mode][name]; !ok || e.Flaky {
					t.Logf("%s failed in %s mode; its last output:\n%s", name, mode, TestOutput(bytes.NewReader(out), pgxModule, name, 40))
				}
			}
			d := Compare(res, expected[mode])
			if !d.OK() {
				t.Errorf("pgx suite in %s mode differs from testdata/pgx-expected-failures.txt:\n%s", mode, d)
			}
		})
	}
}

// pgxDir returns the directory of pgx's module, at the version in the
// sidecar's go.mod, in the module cache (downloading it when missing).
func pgxDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", pgxModule).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", pgxModule, err)
	}
	var m struct{ Dir, Version string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s gave no directory (%v):\n%s", pgxModule, err, out)
	}
	t.Logf("pgx %s from %s", m.Version, m.Dir)
	return m.Dir
}

// setupSuiteDatabase prepares the upstream as pgx's suite expects: the
// sidecar's role is a superuser, the suite's database exists, and the
// suite's testsetup/postgresql_setup.sql (extensions, domains, roles) has
// run in it.
func setupSuiteDatabase(t *testing.T, srv *pgtest.Server, suiteDir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	setup, err := os.ReadFile(filepath.Join(suiteDir, "testsetup", "postgresql_setup.sql"))
	if err != nil {
		t.Fatal(err)
	}
	role := `"` + pgcluster.BrownieRole + `"`
	for _, step := range []struct{ db, sql string }{
		{"postgres", "CREATE ROLE " + role + " LOGIN SUPERUSER"},
		{"postgres", "CREATE DATABASE " + suiteDB + " OWNER " + role},
		{suiteDB, string(setup)},
	} {
		if _, err := srv.Primary.Exec(ctx, step.db, step.sql); err != nil {
			t.Fatalf("setting up the suite's database: %v", err)
		}
	}
}

// startSidecar runs the sidecar in process in front of srv's primary in
// the given pool mode, serving the suite's database, and returns the
// suite's connection string to it. It stops when the test ends.
func startSidecar(t *testing.T, srv *pgtest.Server, mode string) string {
	t.Helper()
	env := map[string]string{
		"DB_HOST":              "localhost",
		"DB_PORT":              strconv.Itoa(srv.Primary.Port()),
		"DB_NAME":              suiteDB,
		"LOCAL_CERT_DIR":       srv.CertDir,
		"LISTEN_ADDR":          "127.0.0.1:0",
		"ADMIN_ADDR":           "off",
		"POOL_MODE":            mode,
		"POOL_SIZE":            "20",
		"POOL_ACQUIRE_TIMEOUT": "30s",
		"SHUTDOWN_TIMEOUT":     "2s",
	}
	cfg, err := config.Load(env)
	if err != nil {
		t.Fatal(err)
	}
	logs := new(pgtest.Buffer)
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logs), zap.WarnLevel))
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan app.Started, 1)
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, cfg, nil, log, app.Threads{}, func(s app.Started) { started <- s }) }()
	var addr string
	select {
	case s := <-started:
		addr = s.ProxyAddrs[0].String()
	case err := <-done:
		cancel()
		t.Fatalf("sidecar stopped during startup: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("sidecar did not start:\n%s", logs)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sidecar: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("sidecar did not stop")
		}
		if t.Failed() {
			t.Logf("sidecar warnings:\n%s", tail(logs.String(), 200))
		}
	})
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf("host=%s port=%s user=%s database=%s sslmode=disable", host, port, pgcluster.BrownieRole, suiteDB)
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

var jsonMu sync.Mutex

// runPgxSuite runs every package of pgx's suite with
// PGX_TEST_DATABASE=dsn and returns its results and its go test -json
// output.
func runPgxSuite(t *testing.T, suiteDir, dsn, label string) (Results, []byte) {
	t.Helper()
	args := []string{"test", "-json", "-count=1", "-p", strconv.Itoa(*suiteP), "-timeout", suiteTimeout.String(), "./..."}
	ctx, cancel := context.WithTimeout(t.Context(), suiteTimeout+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = suiteDir
	cmd.Env = suiteEnv(dsn)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s: go %s: %v in %s", label, strings.Join(args, " "), err, time.Since(start).Round(time.Second))
	if *keepJSON != "" {
		jsonMu.Lock()
		_ = os.WriteFile(filepath.Join(*keepJSON, "pgx-"+label+".json"), stdout.Bytes(), 0o644)
		jsonMu.Unlock()
	}
	res, perr := ParseTestJSON(bytes.NewReader(stdout.Bytes()), pgxModule)
	if perr != nil {
		t.Fatal(perr)
	}
	if len(res) == 0 {
		t.Fatalf("%s: the suite reported no tests (%v):\n%s", label, err, tail(stderr.String(), 50))
	}
	return res, stdout.Bytes()
}

// suiteEnv is the suite's environment: the caller's, without PG*
// variables that would redirect it, with PGX_TEST_DATABASE. The module
// cache is read-only, so nothing may try to write go.mod or go.sum.
func suiteEnv(dsn string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || k == "GOFLAGS" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PGX_TEST_DATABASE="+dsn)
}
