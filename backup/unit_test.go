package backup

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

func TestBackupNamesAreStrict(t *testing.T) {
	at := time.Date(2026, 11, 27, 2, 0, 0, 0, time.UTC)
	if got := Name(at); got != "brownie-20261127T020000Z" {
		t.Fatalf("Name = %q", got)
	}
	if got, ok := ParseName("brownie-20261127T020000Z"); !ok || !got.Equal(at) {
		t.Errorf("ParseName = %v, %v", got, ok)
	}
	for _, bad := range []string{
		"", "brownie-", "../brownie-20261127T020000Z", "brownie-20261127T020000Z/..",
		"brownie-20261127T020000Z/manifest.json", "brownie-20261327T020000Z", "Brownie-20261127T020000Z",
		"brownie-20261127T020000", "brownie-20261127T020000Z ", "other-20261127T020000Z",
	} {
		if _, ok := ParseName(bad); ok {
			t.Errorf("ParseName(%q) accepted", bad)
		}
	}
}

func TestManifestsNamingObjectsOutsideTheirBackupAreRejected(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	good := func() Manifest {
		return Manifest{Name: "brownie-20261127T020000Z", Shards: []ShardManifest{
			{Shard: "shard-a", Object: "shard-a.dump", Bytes: 10, SHA256: sum},
		}}
	}
	m := good()
	if err := CheckManifest(m.Name, &m); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	for name, mutate := range map[string]func(*Manifest){
		"other name":       func(m *Manifest) { m.Name = "brownie-20261127T030000Z" },
		"no shard":         func(m *Manifest) { m.Shards = nil },
		"object traversal": func(m *Manifest) { m.Shards[0].Object = "../brownie-20200101T000000Z/shard-a.dump" },
		"shard with slash": func(m *Manifest) { m.Shards[0].Shard, m.Shards[0].Object = "a/b", "a/b.dump" },
		"dot shard":        func(m *Manifest) { m.Shards[0].Shard, m.Shards[0].Object = "..", "...dump" },
		"short checksum":   func(m *Manifest) { m.Shards[0].SHA256 = "ab" },
		"duplicate shard":  func(m *Manifest) { m.Shards = append(m.Shards, m.Shards[0]) },
	} {
		m := good()
		mutate(&m)
		if err := CheckManifest("brownie-20261127T020000Z", &m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDisabledBackupsRefuseEveryOperation(t *testing.T) {
	m, err := New(config.Backup{Schedule: "0 2 * * *"}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := t.Context()
	if _, err := m.Create(ctx); !errors.Is(err, ErrDisabled) {
		t.Errorf("Create = %v", err)
	}
	if _, err := m.List(ctx); !errors.Is(err, ErrDisabled) {
		t.Errorf("List = %v", err)
	}
	if _, err := m.Get(ctx, "brownie-20261127T020000Z"); !errors.Is(err, ErrDisabled) {
		t.Errorf("Get = %v", err)
	}
	if _, err := m.Restore(ctx, RestoreRequest{BackupName: "brownie-20261127T020000Z"}); !errors.Is(err, ErrDisabled) {
		t.Errorf("Restore = %v", err)
	}
	if st := m.Status(); st.Provider != "" || st.Schedule != config.BackupScheduleOff || st.Running {
		t.Errorf("Status = %+v", st)
	}
	rctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Run(rctx); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// newOfflineManager is a Manager on a local destination whose shards and
// certificates fail the test if anything tries to reach them.
func newOfflineManager(t *testing.T) *Manager {
	t.Helper()
	m, err := New(config.Backup{
		Provider: config.BackupLocal, Destination: t.TempDir(), Schedule: "off",
		RetentionDays: 30, Concurrency: 1, Timeout: time.Minute, CompressionLevel: -1,
	}, Deps{
		Database: "brownie_metadata", User: "brownie-fastapi-server", SSLMode: "verify-full",
		Shards: func() []Shard { t.Error("shards consulted"); return nil },
		Certs: func() ([]byte, []byte, []byte, error) {
			t.Error("certificate read")
			return nil, nil, nil, errors.New("no")
		},
		Worker: workerPath(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func TestRestoreRequestsAreCheckedBeforeAnythingIsTouched(t *testing.T) {
	m := newOfflineManager(t)
	name := "brownie-20261127T020000Z"
	for _, tc := range []struct {
		req  RestoreRequest
		want error
	}{
		{RestoreRequest{BackupName: name}, ErrConfirmRequired},
		{RestoreRequest{BackupName: name, Confirm: "brownie-20261127T020001Z"}, ErrConfirmRequired},
		{RestoreRequest{BackupName: "../" + name, Confirm: "../" + name}, ErrInvalidName},
		{RestoreRequest{BackupName: name, TargetDatabase: `x"; DROP DATABASE brownie_metadata; --`}, ErrInvalidName},
		{RestoreRequest{BackupName: name, TargetDatabase: "brownie_metadata"}, ErrExists},
		{RestoreRequest{BackupName: name, TargetDatabase: "restored"}, ErrNotFound},
		{RestoreRequest{BackupName: name, Confirm: name}, ErrNotFound},
	} {
		res, err := m.Restore(t.Context(), tc.req)
		if !errors.Is(err, tc.want) || res != nil {
			t.Errorf("Restore(%+v) = %+v, %v; want %v", tc.req, res, err, tc.want)
		}
	}
}

func TestOneOperationAtATime(t *testing.T) {
	m := newOfflineManager(t)
	if !m.begin(opRestore) {
		t.Fatal("begin")
	}
	if _, err := m.Create(t.Context()); !errors.Is(err, ErrBusy) {
		t.Errorf("Create during a restore = %v, want ErrBusy", err)
	}
	name := "brownie-20261127T020000Z"
	if _, err := m.Restore(t.Context(), RestoreRequest{BackupName: name, Confirm: name}); !errors.Is(err, ErrBusy) {
		t.Errorf("Restore during a restore = %v, want ErrBusy", err)
	}
	if man, err := m.RunScheduled(t.Context(), time.Now()); man != nil || err != nil {
		t.Errorf("RunScheduled during a restore = %v, %v; want a skip", man, err)
	}
	if !m.Status().Running {
		t.Error("Status().Running is false")
	}
	m.end()
	if m.Status().Running {
		t.Error("Status().Running stays true")
	}
}

func TestCertsFromSourceGivesPEMFilesOfTheCurrentValidCertificate(t *testing.T) {
	ca, err := brownietls.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	source := func(opts brownietls.LeafOptions) brownietls.Source {
		t.Helper()
		certPEM, keyPEM, err := ca.Issue(opts)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for name, data := range map[string][]byte{"client.crt": certPEM, "client.key": keyPEM, "ca.crt": ca.CertPEM} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		src, err := brownietls.NewFileSource(brownietls.FileConfig{Dir: dir}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return src
	}

	certPEM, keyPEM, caPEM, err := CertsFromSource(source(brownietls.LeafOptions{CommonName: "brownie-fastapi-server", Client: true}))()
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("certificate and key do not make a pair: %v", err)
	}
	if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err != nil || leaf.Subject.CommonName != "brownie-fastapi-server" {
		t.Errorf("leaf: %v, %v", leaf, err)
	}
	if !bytes.Equal(bytes.TrimSpace(caPEM), bytes.TrimSpace(ca.CertPEM)) {
		t.Errorf("CA PEM differs from ca.crt")
	}

	expired := source(brownietls.LeafOptions{CommonName: "brownie-fastapi-server", Client: true,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if _, _, _, err := CertsFromSource(expired)(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired certificate: %v", err)
	}
}
