package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultLeafTTL is the lifetime of certificates issued without a TTL or
// NotAfter, and of a CA created with a zero TTL.
const DefaultLeafTTL = 365 * 24 * time.Hour

// backdate absorbs clock skew between the issuer and the verifier.
const backdate = 5 * time.Minute

// CA is a development certificate authority. It is for local runs and tests
// only; production certificates come from the platform. A CA is immutable
// and safe for concurrent use.
type CA struct {
	// Cert is the self-signed CA certificate.
	Cert *x509.Certificate
	// Key signs issued certificates.
	Key crypto.Signer
	// CertPEM is Cert in PEM form, as written to ca.crt.
	CertPEM []byte
}

// NewCA creates a self-signed ECDSA P-256 CA valid from five minutes ago for
// ttl (DefaultLeafTTL if zero or negative), with a random 128-bit serial,
// critical basicConstraints CA:TRUE and keyUsage certSign and crlSign.
func NewCA(commonName string, ttl time.Duration) (*CA, error) {
	if ttl <= 0 {
		ttl = DefaultLeafTTL
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemCert(der)}, nil
}

// LeafOptions describes a certificate issued by CA.Issue.
type LeafOptions struct {
	// CommonName is the subject CN; for client certificates Postgres maps
	// it to the database user.
	CommonName string
	// DNSNames and IPs are the subject alternative names.
	DNSNames []string
	IPs      []net.IP
	// Client adds ExtKeyUsageClientAuth.
	Client bool
	// Server adds ExtKeyUsageServerAuth.
	Server bool
	// NotBefore defaults to five minutes ago; NotAfter defaults to now plus
	// TTL.
	NotBefore, NotAfter time.Time
	// TTL defaults to DefaultLeafTTL.
	TTL time.Duration
}

// Issue signs a new leaf certificate with a fresh ECDSA P-256 key and a
// random serial. It returns the certificate and a PKCS#8 "PRIVATE KEY", both
// PEM encoded. It is safe for concurrent use.
func (ca *CA) Issue(opts LeafOptions) (certPEM, keyPEM []byte, err error) {
	now := time.Now()
	if opts.TTL <= 0 {
		opts.TTL = DefaultLeafTTL
	}
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-backdate)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(opts.TTL)
	}
	if !opts.NotAfter.After(opts.NotBefore) {
		return nil, nil, errors.New("issue certificate: not after must follow not before")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: opts.CommonName},
		DNSNames:     opts.DNSNames,
		IPAddresses:  opts.IPs,
		NotBefore:    opts.NotBefore,
		NotAfter:     opts.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if opts.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if opts.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate %q: %w", opts.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, errors.New("marshal private key")
	}
	return pemCert(der), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// WriteDevCerts creates dir (mode 0700) if missing and writes a fresh
// development CA (ca.crt, ca.key), a Postgres server certificate for
// localhost, postgres, 127.0.0.1 and ::1 (server.crt, server.key) and a client
// certificate with CN clientCN (client.crt, client.key). Keys are 0600 and
// certificates 0644. Each file is replaced atomically, so a watcher never sees
// a half-written file, but the set is not: a reader may briefly see a new
// certificate next to an old key. Existing files are overwritten.
func WriteDevCerts(dir, clientCN string) error {
	if clientCN == "" {
		return errors.New("write dev certs: client common name is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write dev certs: %w", err)
	}
	ca, err := NewCA("Brownie sidecar dev CA", 10*DefaultLeafTTL)
	if err != nil {
		return err
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return errors.New("marshal CA key")
	}
	serverCrt, serverKey, err := ca.Issue(LeafOptions{
		CommonName: "localhost",
		DNSNames:   []string{"localhost", "postgres"},
		IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		Server:     true,
	})
	if err != nil {
		return err
	}
	clientCrt, clientKey, err := ca.Issue(LeafOptions{CommonName: clientCN, Client: true})
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"ca.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKeyDER}), 0o600},
		{"ca.crt", ca.CertPEM, 0o644},
		{"server.key", serverKey, 0o600},
		{"server.crt", serverCrt, 0o644},
		{"client.key", clientKey, 0o600},
		{"client.crt", clientCrt, 0o644},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

// LoadCA reads ca.crt and ca.key from dir, as written by WriteDevCerts, so
// more certificates can be issued under the same root.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certPEM, err := readFile("CA certificate", certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile("CA key", keyPath)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertificates(certPEM)
	if err != nil {
		return nil, &CertError{Reason: ReasonCA, path: certPath,
			Msg: fmt.Sprintf("parse CA certificate %s: %v", certPath, err)}
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, &CertError{Reason: ReasonParse, path: keyPath,
			Msg: fmt.Sprintf("parse CA key %s: %v", keyPath, err)}
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, &CertError{Reason: ReasonCA, path: certPath,
			Msg: fmt.Sprintf("certificate %s is not a CA", certPath)}
	}
	if !publicKeysMatch(cert, key) {
		return nil, &CertError{Reason: ReasonMismatch, path: keyPath,
			Msg: fmt.Sprintf("CA key %s does not match certificate %s", keyPath, certPath)}
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemCert(cert.Raw)}, nil
}

// WriteFileAtomic writes data to a temporary file in path's directory, sets
// perm (regardless of umask), syncs it and renames it over path, so readers
// see either the old file or the complete new one. The temporary file is
// removed on failure.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func randomSerial() (*big.Int, error) {
	// Uniform in [1, 2^128-1]: 128 random bits, never zero.
	limit := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))
	serial, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
