package pgtest_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
	bstls "github.com/brownie/brownie-sidecar/tls"
)

func psql(ctx context.Context, t *testing.T, dsn, sql string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "/usr/bin/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", &runError{err, errOut.String()}
	}
	return strings.TrimSpace(out.String()), nil
}

type runError struct {
	err    error
	stderr string
}

func (e *runError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }

func TestStartGivesASchemaReachableWithTheClientCertificate(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s := pgtest.Start(t, pgtest.Options{Replica: true, Schema: true})

	for _, c := range []*pgcluster.Cluster{s.Primary, s.Replica} {
		got, err := psql(ctx, t, s.DSN(c, pgcluster.BrownieDatabase),
			"SELECT current_user || ',' || pg_is_in_recovery() || ',' || (SELECT version_num FROM alembic_version)")
		if err != nil {
			t.Fatalf("port %d: %v", c.Port(), err)
		}
		want := pgcluster.BrownieRole + "," + map[bool]string{false: "false", true: "true"}[c == s.Replica] + ",d607e412e7b0"
		if got != want {
			t.Errorf("port %d: got %q, want %q", c.Port(), got, want)
		}
	}
}

func TestCAIssuesCertificatesTheClustersTrust(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s := pgtest.Start(t, pgtest.Options{})

	// A certificate for the superuser, from the same CA, logs in as it.
	crt, key, err := s.CA().Issue(bstls.LeafOptions{CommonName: "postgres", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crtPath, keyPath := filepath.Join(dir, "pg.crt"), filepath.Join(dir, "pg.key")
	if err := os.WriteFile(crtPath, crt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	dsn := strings.NewReplacer(
		"user="+pgcluster.BrownieRole, "user=postgres",
		filepath.Join(s.CertDir, "client.crt"), crtPath,
		filepath.Join(s.CertDir, "client.key"), keyPath,
	).Replace(s.DSN(s.Primary, "postgres"))
	got, err := psql(ctx, t, dsn, "SELECT current_user")
	if err != nil {
		t.Fatal(err)
	}
	if got != "postgres" {
		t.Fatalf("current_user = %q", got)
	}
	if s.Replica != nil {
		t.Fatal("replica started without Options.Replica")
	}
}
