package pgtest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	bstls "github.com/brownie/brownie-sidecar/tls"
)

// Options selects what Start sets up.
type Options struct {
	// Replica also starts a streaming replica of the primary.
	Replica bool
	// Settings are extra postgresql.conf settings for every cluster.
	Settings map[string]string
	// Schema creates role brownie-fastapi-server and database
	// brownie_metadata with the Brownie schema (deploy/sql) on the primary,
	// before the replica is copied from it.
	Schema bool
	// Shards starts that many primaries (each with its replica when
	// Replica is set) sharing one certificate directory, as the shards of
	// one cluster; 0 means 1.
	Shards int
	// SyncReplication makes each replica its primary's synchronous
	// standby (pgcluster.SynchronousSettings, set on the primary once the
	// replica streams): a commit is acknowledged once the replica has it.
	// Needs Replica.
	SyncReplication bool
}

// Shard is one primary and its optional replica.
type Shard struct {
	Primary *pgcluster.Cluster
	Replica *pgcluster.Cluster
}

// Server is a running primary, and optionally a replica, for one test. It is
// read-only after Start and safe for concurrent use; the clusters' own
// methods (Exec, Kill, Promote...) may be used for failure scenarios.
type Server struct {
	// Primary is the read-write cluster.
	Primary *pgcluster.Cluster
	// Replica is the streaming replica, nil unless Options.Replica.
	Replica *pgcluster.Cluster
	// Shards are every shard in order; Shards[0] is Primary and Replica.
	Shards []Shard
	// CertDir holds the development certificates: ca.crt and ca.key, the
	// clusters' server.crt and server.key (SANs localhost, postgres,
	// 127.0.0.1, ::1) and client.crt and client.key with
	// CN brownie-fastapi-server.
	CertDir string

	ca *bstls.CA
}

// setupTimeout bounds Start; a primary, replica and schema take a few
// seconds.
const setupTimeout = 2 * time.Minute

// Start creates and starts the clusters described by opts and registers
// tb.Cleanup to stop them and remove their files. It never skips: when the
// PostgreSQL binaries are missing or anything fails, it fails the test with
// the reason and the commands' output.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), setupTimeout)
	defer cancel()

	if _, err := pgcluster.FindBinDir(); err != nil {
		tb.Fatalf("pgtest: integration tests need PostgreSQL installed locally: %v", err)
	}
	// t.TempDir is 0700 under a 0700 parent, which the postgres OS user
	// cannot traverse when tests run as root, so make our own 0755 base.
	base, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(base); err != nil {
			tb.Errorf("pgtest: remove %s: %v", base, err)
		}
	})
	if err := os.Chmod(base, 0o755); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}

	s := &Server{CertDir: filepath.Join(base, "certs")}
	if err := bstls.WriteDevCerts(s.CertDir, pgcluster.BrownieRole); err != nil {
		tb.Fatalf("pgtest: write dev certificates: %v", err)
	}
	if s.ca, err = bstls.LoadCA(s.CertDir); err != nil {
		tb.Fatalf("pgtest: load dev CA: %v", err)
	}

	if opts.SyncReplication && !opts.Replica {
		tb.Fatalf("pgtest: SyncReplication needs Replica")
	}
	log := new(Buffer)
	start := func(name string, primary *pgcluster.Cluster) *pgcluster.Cluster {
		tb.Helper()
		c, err := pgcluster.Create(ctx, pgcluster.Config{
			Dir:        filepath.Join(base, name),
			ServerCert: filepath.Join(s.CertDir, "server.crt"),
			ServerKey:  filepath.Join(s.CertDir, "server.key"),
			CACert:     filepath.Join(s.CertDir, "ca.crt"),
			PrimaryOf:  primary,
			Settings:   opts.Settings,
			Log:        log,
		})
		if err != nil {
			tb.Fatalf("pgtest: create %s: %v\n%s", name, err, log)
		}
		if err := c.Start(ctx); err != nil {
			tb.Fatalf("pgtest: start %s: %v", name, err)
		}
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := c.Stop(ctx); err != nil {
				tb.Errorf("pgtest: stop %s: %v", name, err)
			}
		})
		return c
	}

	for i := range max(opts.Shards, 1) {
		prefix := ""
		if i > 0 {
			prefix = "shard-" + strconv.Itoa(i) + "-"
		}
		var sh Shard
		sh.Primary = start(prefix+"primary", nil)
		if opts.Schema {
			if err := sh.Primary.EnsureBrownieDatabase(ctx); err != nil {
				tb.Fatalf("pgtest: %v", err)
			}
		}
		if opts.Replica {
			sh.Replica = start(prefix+"replica", sh.Primary)
			if err := sh.Replica.WaitReplayed(ctx, sh.Primary); err != nil {
				tb.Fatalf("pgtest: %v", err)
			}
			if opts.SyncReplication {
				if err := sh.Primary.MakeSynchronous(ctx, pgcluster.StandbyName(filepath.Join(base, prefix+"replica"))); err != nil {
					tb.Fatalf("pgtest: %v", err)
				}
			}
		}
		s.Shards = append(s.Shards, sh)
	}
	s.Primary, s.Replica = s.Shards[0].Primary, s.Shards[0].Replica
	return s
}

// CA returns the development CA that signed the clusters' certificates and
// that the clusters trust for client certificates; tests use it to issue
// more certificates (another CN, expired, not yet valid...).
func (s *Server) CA() *bstls.CA { return s.ca }

// DSN returns a libpq keyword/value connection string for cluster c (the
// primary or the replica) and database db, over TCP to localhost with
// sslmode=verify-full, the CA from CertDir as root and client.crt/client.key
// as the client certificate, as user brownie-fastapi-server.
func (s *Server) DSN(c *pgcluster.Cluster, db string) string {
	kv := []struct{ k, v string }{
		{"host", "localhost"},
		{"port", strconv.Itoa(c.Port())},
		{"dbname", db},
		{"user", pgcluster.BrownieRole},
		{"sslmode", "verify-full"},
		{"sslrootcert", filepath.Join(s.CertDir, "ca.crt")},
		{"sslcert", filepath.Join(s.CertDir, "client.crt")},
		{"sslkey", filepath.Join(s.CertDir, "client.key")},
	}
	parts := make([]string, len(kv))
	for i, p := range kv {
		parts[i] = p.k + "=" + quoteDSN(p.v)
	}
	return strings.Join(parts, " ")
}

// quoteDSN quotes a keyword/value connection-string value when it needs it.
func quoteDSN(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// Buffer is a bytes.Buffer safe for concurrent Write and String: it
// collects command output for failure messages, and logs in tests.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls cond every 20ms until it holds, and fails tb when it
// still does not after within, naming what it waited for.
func WaitFor(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
