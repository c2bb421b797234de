package tls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	cryptotls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// runSource starts s.Run and stops it when the test ends, failing the test if
// Run returns an error or does not stop.
func runSource(t *testing.T, s Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	// Edits made before a file source's watch is in place would only be
	// seen by the 30s poll, which is longer than any test waits.
	if fs, ok := s.(*FileSource); ok {
		eventually(t, 5*time.Second, fs.watching.Load)
	}
}

func newSource(t *testing.T, dir string) (*FileSource, *observer.ObservedLogs) {
	t.Helper()
	log, logs := observedLogger()
	s, err := NewFileSource(FileConfig{Dir: dir, Debounce: 20 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

func currentSerial(s Source) string {
	b, err := s.Current()
	if err != nil {
		return ""
	}
	return b.Serial
}

func handshakeSerial(t *testing.T, s Source) string {
	t.Helper()
	c, err := s.GetClientCertificate(&cryptotls.CertificateRequestInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.Text(16)
}

func TestNewFileSourceLoadsThePairAndReportsGenerationOne(t *testing.T) {
	ca := testCA(t)
	dir, serial := writeClientDir(t, ca, LeafOptions{})
	s, logs := newSource(t, dir)

	b, err := s.Current()
	if err != nil {
		t.Fatal(err)
	}
	if b.Serial != serial || b.Generation != 1 || b.Roots == nil || b.Certificate.Leaf != b.Leaf {
		t.Errorf("bundle = serial %s gen %d roots %v", b.Serial, b.Generation, b.Roots)
	}
	if err := b.ValidAt(time.Now()); err != nil {
		t.Errorf("ValidAt: %v", err)
	}
	st := s.Status()
	if st.Source != "file" || st.Serial != serial || st.Generation != 1 || st.Rotations != 0 ||
		st.LastError != "" || st.Failures != 0 || st.LastAttempt.IsZero() {
		t.Errorf("status = %+v", st)
	}
	if logs.FilterMessage("certificate loaded").Len() != 1 {
		t.Error(`want one "certificate loaded" log`)
	}
}

func TestFileSourceRotatesWhenFilesAreRewritten(t *testing.T) {
	ca := testCA(t)
	dir, oldSerial := writeClientDir(t, ca, LeafOptions{})
	s, logs := newSource(t, dir)
	runSource(t, s)

	crt, key, newSerial := issueClient(t, ca, LeafOptions{})
	writeFiles(t, dir, map[string][]byte{"client.key": key, "client.crt": crt})

	eventually(t, 5*time.Second, func() bool {
		return currentSerial(s) == newSerial && s.Status().LastError == "" &&
			logs.FilterMessage("certificate rotated").Len() > 0
	})
	st := s.Status()
	if st.Generation != 2 || st.Rotations != 1 || st.Serial != newSerial {
		t.Errorf("status = %+v, want generation 2, one rotation", st)
	}
	if got := handshakeSerial(t, s); got != newSerial {
		t.Errorf("GetClientCertificate serial = %s, want %s", got, newSerial)
	}
	rotated := logs.FilterMessage("certificate rotated").All()
	if len(rotated) != 1 {
		t.Fatalf("got %d rotation logs, want 1", len(rotated))
	}
	fields := rotated[0].ContextMap()
	if fields["old_serial"] != oldSerial || fields["new_serial"] != newSerial {
		t.Errorf("rotation log fields = %v", fields)
	}
	if _, ok := fields["new_not_after"]; !ok {
		t.Errorf("rotation log lacks new_not_after: %v", fields)
	}
}

// publishK8s writes files into a timestamped directory and points ..data at
// it with an atomic symlink rename, as the kubelet does for secret volumes.
func publishK8s(t *testing.T, dir, stamp string, files map[string][]byte) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, stamp), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, stamp, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(stamp, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func TestFileSourceRotatesOnKubernetesSymlinkSwap(t *testing.T) {
	ca := testCA(t)
	dir := t.TempDir()
	crt, key, oldSerial := issueClient(t, ca, LeafOptions{})
	publishK8s(t, dir, "..2026_01_01_00_00_00.000000001",
		map[string][]byte{"ca.crt": ca.CertPEM, "client.crt": crt, "client.key": key})
	for _, name := range []string{"ca.crt", "client.crt", "client.key"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := newSource(t, dir)
	if currentSerial(s) != oldSerial {
		t.Fatalf("initial serial = %s, want %s", currentSerial(s), oldSerial)
	}
	runSource(t, s)

	crt, key, newSerial := issueClient(t, ca, LeafOptions{})
	publishK8s(t, dir, "..2026_01_02_00_00_00.000000002",
		map[string][]byte{"ca.crt": ca.CertPEM, "client.crt": crt, "client.key": key})
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.000000001")); err != nil {
		t.Fatal(err)
	}

	eventually(t, 5*time.Second, func() bool { return currentSerial(s) == newSerial })
	st := s.Status()
	if st.Generation != 2 || st.Rotations != 1 || st.LastError != "" {
		t.Errorf("status = %+v, want generation 2, one rotation, no error", st)
	}
	if got := handshakeSerial(t, s); got != newSerial {
		t.Errorf("GetClientCertificate serial = %s, want %s", got, newSerial)
	}
}

func TestFileSourceKeepsTheOldBundleWhenTheNewCertificateIsGarbage(t *testing.T) {
	ca := testCA(t)
	dir, oldSerial := writeClientDir(t, ca, LeafOptions{})
	s, logs := newSource(t, dir)
	runSource(t, s)

	writeFiles(t, dir, map[string][]byte{"client.crt": []byte("not a certificate\n")})

	eventually(t, 5*time.Second, func() bool { return s.Status().Failures >= 1 })
	st := s.Status()
	if st.LastErrorReason != ReasonParse || !strings.Contains(st.LastError, "client.crt") {
		t.Errorf("status = %+v, want a parse error naming client.crt", st)
	}
	if currentSerial(s) != oldSerial || st.Serial != oldSerial || st.Generation != 1 {
		t.Errorf("bundle changed to %s (generation %d), want %s kept", currentSerial(s), st.Generation, oldSerial)
	}
	failed := logs.FilterMessage("certificate reload failed").All()
	if len(failed) == 0 {
		t.Fatal(`no "certificate reload failed" log`)
	}
	fields := failed[0].ContextMap()
	if fields["path"] != filepath.Join(dir, "client.crt") || fields["reason"] != ReasonParse || fields["error"] == nil {
		t.Errorf("failure log fields = %v", fields)
	}
}

func TestReloadKeepsTheOldBundleWhenTheKeyDoesNotMatch(t *testing.T) {
	ca := testCA(t)
	dir, oldSerial := writeClientDir(t, ca, LeafOptions{})
	s, _ := newSource(t, dir)

	crt, _, _ := issueClient(t, ca, LeafOptions{})
	writeFiles(t, dir, map[string][]byte{"client.crt": crt})

	err := s.Reload()
	var ce *CertError
	if !errors.As(err, &ce) || ce.Reason != ReasonMismatch {
		t.Fatalf("Reload = %v, want a mismatch CertError", err)
	}
	st := s.Status()
	if st.LastErrorReason != ReasonMismatch || st.Failures != 1 || st.Generation != 1 {
		t.Errorf("status = %+v", st)
	}
	if currentSerial(s) != oldSerial {
		t.Errorf("serial = %s, want %s kept", currentSerial(s), oldSerial)
	}
}

func TestReloadKeepsTheOldBundleWhenTheCAIsGarbage(t *testing.T) {
	ca := testCA(t)
	dir, oldSerial := writeClientDir(t, ca, LeafOptions{})
	s, _ := newSource(t, dir)

	writeFiles(t, dir, map[string][]byte{"ca.crt": []byte("garbage")})

	if err := s.Reload(); err == nil {
		t.Fatal("Reload accepted a garbage CA file")
	}
	if st := s.Status(); st.LastErrorReason != ReasonCA || currentSerial(s) != oldSerial {
		t.Errorf("status = %+v, serial %s", st, currentSerial(s))
	}
}

func TestReloadClearsTheLastErrorOnceTheFilesAreFixed(t *testing.T) {
	ca := testCA(t)
	dir, _ := writeClientDir(t, ca, LeafOptions{})
	s, _ := newSource(t, dir)
	good, err := os.ReadFile(filepath.Join(dir, "client.crt"))
	if err != nil {
		t.Fatal(err)
	}

	writeFiles(t, dir, map[string][]byte{"client.crt": []byte("garbage")})
	_ = s.Reload()
	writeFiles(t, dir, map[string][]byte{"client.crt": good})
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.LastError != "" || st.LastErrorReason != "" || st.Failures != 1 || st.Generation != 1 {
		t.Errorf("status = %+v, want error cleared, one failure, generation 1", st)
	}
}

func TestReloadWithIdenticalContentKeepsTheGeneration(t *testing.T) {
	ca := testCA(t)
	dir, serial := writeClientDir(t, ca, LeafOptions{})
	s, logs := newSource(t, dir)
	before, _ := s.Current()

	for _, name := range []string{"client.crt", "client.key", "ca.crt"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		writeFiles(t, dir, map[string][]byte{name: data}) // new inode, same bytes
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Current()
	st := s.Status()
	if after != before || st.Generation != 1 || st.Rotations != 0 || st.Serial != serial {
		t.Errorf("identical reload changed the bundle: %+v", st)
	}
	if logs.FilterMessage("certificate rotated").Len() != 0 {
		t.Error("identical reload logged a rotation")
	}
}

func TestNewFileSourceLoadsAnExpiredCertificateAndReportsIt(t *testing.T) {
	ca := testCA(t)
	now := time.Now()
	dir, serial := writeClientDir(t, ca, LeafOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	s, _ := newSource(t, dir)

	b, err := s.Current()
	if err != nil {
		t.Fatal(err)
	}
	err = b.ValidAt(time.Now())
	var ce *CertError
	if !errors.As(err, &ce) || ce.Reason != ReasonExpired {
		t.Fatalf("ValidAt = %v, want an expired CertError", err)
	}
	if !strings.Contains(err.Error(), serial) || !strings.Contains(err.Error(), b.NotAfter.UTC().Format(time.RFC3339)) {
		t.Errorf("message %q lacks serial %s or NotAfter", err, serial)
	}
	if st := s.Status(); st.LastErrorReason != ReasonExpired || st.Serial != serial || st.Generation != 1 {
		t.Errorf("status = %+v, want expired reported", st)
	}
}

func TestValidAtReportsANotYetValidCertificate(t *testing.T) {
	ca := testCA(t)
	now := time.Now()
	dir, serial := writeClientDir(t, ca, LeafOptions{NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})
	s, _ := newSource(t, dir)
	b, _ := s.Current()

	err := b.ValidAt(now)
	var ce *CertError
	if !errors.As(err, &ce) || ce.Reason != ReasonNotYetValid || !strings.Contains(ce.Msg, serial) {
		t.Fatalf("ValidAt = %v, want not_yet_valid naming %s", err, serial)
	}
	if err := b.ValidAt(now.Add(90 * time.Minute)); err != nil {
		t.Errorf("ValidAt inside the window = %v", err)
	}
}

func TestReloadRejectsAnExpiredCertificateWhileTheCurrentOneIsValid(t *testing.T) {
	ca := testCA(t)
	dir, oldSerial := writeClientDir(t, ca, LeafOptions{})
	s, _ := newSource(t, dir)

	now := time.Now()
	crt, key, _ := issueClient(t, ca, LeafOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	writeFiles(t, dir, map[string][]byte{"client.key": key, "client.crt": crt})

	if err := s.Reload(); err == nil {
		t.Fatal("Reload accepted an expired certificate over a valid one")
	}
	if st := s.Status(); st.LastErrorReason != ReasonExpired || currentSerial(s) != oldSerial || st.Generation != 1 {
		t.Errorf("status = %+v, want old bundle kept and expired reported", st)
	}
}

func TestNewFileSourceNamesTheMissingPath(t *testing.T) {
	for _, name := range []string{"client.crt", "client.key", "ca.crt"} {
		t.Run(name, func(t *testing.T) {
			dir, _ := writeClientDir(t, testCA(t), LeafOptions{})
			path := filepath.Join(dir, name)
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			_, err := NewFileSource(FileConfig{Dir: dir}, zap.NewNop())
			if err == nil {
				t.Fatal("NewFileSource succeeded without " + name)
			}
			var ce *CertError
			if !errors.As(err, &ce) || ce.Reason != ReasonRead || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q, want a read CertError naming %s", err, path)
			}
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v does not wrap fs.ErrNotExist", err)
			}
		})
	}
}

func TestNewFileSourceHonoursAbsoluteAndCustomFileNames(t *testing.T) {
	ca := testCA(t)
	dir := t.TempDir()
	caDir := t.TempDir()
	crt, key, serial := issueClient(t, ca, LeafOptions{})
	writeFiles(t, dir, map[string][]byte{"client.crt": crt, "client.key": key})
	if err := os.Rename(filepath.Join(dir, "client.crt"), filepath.Join(dir, "tls.crt")); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, caDir, map[string][]byte{"ca.crt": ca.CertPEM})

	s, err := NewFileSource(FileConfig{Dir: dir, CertFile: "tls.crt", CAFile: filepath.Join(caDir, "ca.crt")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if currentSerial(s) != serial {
		t.Errorf("serial = %s, want %s", currentSerial(s), serial)
	}
}

func TestNewFileSourceAcceptsPKCS1AndECKeys(t *testing.T) {
	ca := testCA(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		pub    any
		keyPEM []byte
	}{
		{"EC with parameters block", ecKey.Public(), append(
			pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...)},
		{"RSA PKCS#1", rsaKey.Public(), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(42),
				Subject:      pkix.Name{CommonName: "brownie-fastapi-server"},
				NotBefore:    time.Now().Add(-time.Minute),
				NotAfter:     time.Now().Add(time.Hour),
				ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, tc.pub, ca.Key)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			writeFiles(t, dir, map[string][]byte{"ca.crt": ca.CertPEM, "client.key": tc.keyPEM, "client.crt": pemCert(der)})
			s, err := NewFileSource(FileConfig{Dir: dir}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if currentSerial(s) != "2a" {
				t.Errorf("serial = %q, want 2a", currentSerial(s))
			}
		})
	}
}

func TestErrorsNeverContainKeyMaterial(t *testing.T) {
	ca := testCA(t)
	crt, key, _ := issueClient(t, ca, LeafOptions{})
	otherCrt, _, _ := issueClient(t, ca, LeafOptions{})
	block, _ := pem.Decode(key)
	corrupt := bytes.Clone(block.Bytes)
	corrupt[len(corrupt)/2] ^= 0xff
	corrupt = corrupt[:len(corrupt)-3]
	corruptPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: corrupt})

	// Secrets that must never surface: PEM labels, base64 lines of both
	// keys, and the raw DER.
	var secrets []string
	for _, k := range [][]byte{key, corruptPEM} {
		for _, line := range strings.Split(string(k), "\n") {
			if len(line) > 16 && !strings.HasPrefix(line, "-----") {
				secrets = append(secrets, line[:16])
			}
		}
	}
	secrets = append(secrets, "PRIVATE KEY", string(block.Bytes[8:24]), fmt.Sprintf("%x", block.Bytes[8:24]))

	cases := map[string]map[string][]byte{
		"corrupt key":          {"client.crt": crt, "client.key": corruptPEM},
		"key in the cert file": {"client.crt": key, "client.key": key},
		"cert in the key file": {"client.crt": crt, "client.key": crt},
		"mismatched pair":      {"client.crt": otherCrt, "client.key": key},
		"key as the CA":        {"client.crt": crt, "client.key": key, "ca.crt": key},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			dir, _ := writeClientDir(t, ca, LeafOptions{})
			log, logs := observedLogger()
			s, err := NewFileSource(FileConfig{Dir: dir}, log)
			if err != nil {
				t.Fatal(err)
			}
			writeFiles(t, dir, files)
			reloadErr := s.Reload()
			if reloadErr == nil {
				t.Fatal("Reload accepted a bad pair")
			}
			_, newErr := NewFileSource(FileConfig{Dir: dir}, log)
			if newErr == nil {
				t.Fatal("NewFileSource accepted a bad pair")
			}
			texts := []string{reloadErr.Error(), newErr.Error(), s.Status().LastError}
			for _, e := range logs.All() {
				texts = append(texts, e.Message, fmt.Sprint(e.ContextMap()))
			}
			for _, text := range texts {
				for _, secret := range secrets {
					if strings.Contains(text, secret) {
						t.Errorf("%q contains key material %q", text, secret)
					}
				}
			}
		})
	}
}

func TestClientCertificateCompletesAMutualTLSHandshake(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDevCerts(dir, "brownie-fastapi-server"); err != nil {
		t.Fatal(err)
	}
	s, err := NewFileSource(FileConfig{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Current()
	serverPair, err := cryptotls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}

	clientConn, serverConn := net.Pipe()
	defer clientConn.Close()
	defer serverConn.Close()
	deadline := time.Now().Add(5 * time.Second)
	_ = clientConn.SetDeadline(deadline)
	_ = serverConn.SetDeadline(deadline)

	server := cryptotls.Server(serverConn, &cryptotls.Config{
		Certificates: []cryptotls.Certificate{serverPair},
		ClientAuth:   cryptotls.RequireAndVerifyClientCert,
		ClientCAs:    b.Roots,
	})
	serverDone := make(chan error, 1)
	go func() { serverDone <- server.Handshake() }()

	client := cryptotls.Client(clientConn, &cryptotls.Config{
		ServerName:           "localhost",
		RootCAs:              b.Roots,
		GetClientCertificate: s.GetClientCertificate,
	})
	if err := client.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	peers := server.ConnectionState().PeerCertificates
	if len(peers) == 0 || peers[0].Subject.CommonName != "brownie-fastapi-server" {
		t.Errorf("server saw client certificates %v", peers)
	}
}

func TestGetClientCertificateWithoutABundleReturnsErrNoCertificate(t *testing.T) {
	var s FileSource
	if _, err := s.GetClientCertificate(nil); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("GetClientCertificate = %v, want ErrNoCertificate", err)
	}
	if _, err := s.Current(); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("Current = %v, want ErrNoCertificate", err)
	}
}

func TestRunReturnsNilWhenTheContextEnds(t *testing.T) {
	dir, _ := writeClientDir(t, testCA(t), LeafOptions{})
	s, _ := newSource(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestPollReportsACertificateThatExpiresWhileServed(t *testing.T) {
	dir, serial := writeClientDir(t, testCA(t), LeafOptions{TTL: time.Hour})
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	s, err := NewFileSource(FileConfig{
		Dir:          dir,
		PollInterval: 20 * time.Millisecond,
		Now:          func() time.Time { return time.Unix(0, clock.Load()) },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)

	clock.Store(time.Now().Add(2 * time.Hour).UnixNano()) // no file changes: only the poll can notice
	eventually(t, 5*time.Second, func() bool { return s.Status().LastErrorReason == ReasonExpired })
	if st := s.Status(); st.Serial != serial || st.Generation != 1 || !strings.Contains(st.LastError, serial) {
		t.Errorf("status = %+v", st)
	}
}

func TestNoCASourceServesAServerPairWithoutACAFile(t *testing.T) {
	ca := testCA(t)
	dir := t.TempDir()
	crt, key, serial := issueClient(t, ca, LeafOptions{Server: true})
	for name, data := range map[string][]byte{"tls.crt": crt, "tls.key": key} {
		if err := WriteFileAtomic(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewFileSource(FileConfig{Dir: dir, CertFile: "tls.crt", KeyFile: "tls.key"}, nil); err == nil {
		t.Fatal("a source without ca.crt loaded without NoCA")
	}
	s, err := NewFileSource(FileConfig{Dir: dir, CertFile: "tls.crt", KeyFile: "tls.key", NoCA: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.GetCertificate(nil)
	if err != nil || c.Leaf.SerialNumber.Text(16) != serial {
		t.Fatalf("GetCertificate: %v", err)
	}
}
