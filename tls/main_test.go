package tls

import (
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testCA returns a fresh development CA.
func testCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issueClient issues a client certificate and returns its PEMs and serial.
func issueClient(t *testing.T, ca *CA, opts LeafOptions) (certPEM, keyPEM []byte, serial string) {
	t.Helper()
	opts.Client = true
	if opts.CommonName == "" {
		opts.CommonName = "brownie-fastapi-server"
	}
	certPEM, keyPEM, err := ca.Issue(opts)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, cert.SerialNumber.Text(16)
}

// writeFiles writes name → content into dir atomically.
func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for _, name := range []string{"ca.crt", "client.key", "client.crt"} {
		if data, ok := files[name]; ok {
			if err := WriteFileAtomic(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// writeClientDir fills a new temporary directory with a CA and a client pair
// and returns the directory and the serial.
func writeClientDir(t *testing.T, ca *CA, opts LeafOptions) (dir, serial string) {
	t.Helper()
	dir = t.TempDir()
	crt, key, serial := issueClient(t, ca, opts)
	writeFiles(t, dir, map[string][]byte{"ca.crt": ca.CertPEM, "client.crt": crt, "client.key": key})
	return dir, serial
}

// observedLogger returns a logger whose entries the test can inspect.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}
