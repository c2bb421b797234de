package tls

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func devPool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	return pool
}

func TestWriteDevCertsWritesKeysPrivateAndCertificatesReadable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if err := WriteDevCerts(dir, "brownie-fastapi-server"); err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{
		"ca.crt": 0o644, "ca.key": 0o600,
		"server.crt": 0o644, "server.key": 0o600,
		"client.crt": 0o644, "client.key": 0o600,
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("dir has %d entries, want %d (no temporary files left behind)", len(entries), len(want))
	}
	for name, mode := range want {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != mode {
			t.Errorf("%s mode = %v, want %v", name, got, mode)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("dir mode = %v, want 0700", got)
	}
}

func TestDevServerCertificateVerifiesForLocalhostPostgresAndLoopback(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDevCerts(dir, "brownie-fastapi-server"); err != nil {
		t.Fatal(err)
	}
	server := readCert(t, filepath.Join(dir, "server.crt"))
	if server.Subject.CommonName != "localhost" {
		t.Errorf("server CN = %q, want localhost", server.Subject.CommonName)
	}
	for _, host := range []string{"localhost", "postgres", "127.0.0.1", "::1"} {
		_, err := server.Verify(x509.VerifyOptions{
			DNSName:   host,
			Roots:     devPool(t, dir),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			t.Errorf("verify server certificate for %s: %v", host, err)
		}
	}
	if _, err := server.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: devPool(t, dir)}); err == nil {
		t.Error("server certificate verified for example.com")
	}
}

func TestDevClientCertificateIsForClientAuthWithTheGivenCommonName(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDevCerts(dir, "brownie-fastapi-server"); err != nil {
		t.Fatal(err)
	}
	client := readCert(t, filepath.Join(dir, "client.crt"))
	if client.Subject.CommonName != "brownie-fastapi-server" {
		t.Errorf("client CN = %q", client.Subject.CommonName)
	}
	if len(client.ExtKeyUsage) != 1 || client.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("client ExtKeyUsage = %v, want [ClientAuth]", client.ExtKeyUsage)
	}
	_, err := client.Verify(x509.VerifyOptions{
		Roots:     devPool(t, dir),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		t.Errorf("verify client certificate: %v", err)
	}

	keyPEM, err := os.ReadFile(filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("client.key is not a PKCS#8 PEM block")
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Errorf("client.key: %v", err)
	}
}

func TestNewCAIsAConstrainedCertSigningAuthority(t *testing.T) {
	ca := testCA(t)
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid {
		t.Error("CA certificate lacks CA:TRUE")
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v is not a positive 128-bit number", c.SerialNumber)
	}
	if d := time.Since(c.NotBefore); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("NotBefore is %s ago, want about 5m", d)
	}
	if c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm = %v, want ECDSA", c.PublicKeyAlgorithm)
	}
}

func TestLoadCAIssuesCertificatesUnderTheSameRoot(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDevCerts(dir, "brownie-fastapi-server"); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	crt, _, err := ca.Issue(LeafOptions{CommonName: "another", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCertificates(crt)
	if err != nil {
		t.Fatal(err)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{
		Roots:     devPool(t, dir),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		t.Errorf("certificate from loaded CA does not verify against ca.crt: %v", err)
	}
}

func TestIssueRejectsAnEmptyValidityWindow(t *testing.T) {
	now := time.Now()
	_, _, err := testCA(t).Issue(LeafOptions{CommonName: "x", NotBefore: now, NotAfter: now.Add(-time.Hour)})
	if err == nil {
		t.Fatal("Issue accepted NotAfter before NotBefore")
	}
}
