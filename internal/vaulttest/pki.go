package vaulttest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	cryptotls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// notBeforeDuration is how far Vault backdates NotBefore by default
// (not_before_duration, 30s) to absorb clock skew.
const notBeforeDuration = 30 * time.Second

// Issued describes one certificate the PKI engine issued.
type Issued struct {
	// Op is "sign" or "issue".
	Op string
	// Serial is the serial number; SerialColons is Vault's serial_number
	// form (lower-case hex pairs separated by colons).
	Serial       *big.Int
	SerialColons string
	CommonName   string
	NotBefore    time.Time
	NotAfter     time.Time
}

// signFields are the request fields the sign endpoint knows; anything else
// is recorded as a violation.
var signFields = []string{
	"csr", "common_name", "alt_names", "ip_sans", "uri_sans", "other_sans", "ttl", "format",
	"exclude_cn_from_sans", "not_after", "remove_roots_from_chain", "user_ids", "serial_number",
	"private_key_format", "not_before_duration",
}

// pki implements PUT /v1/<pki>/sign/<role> and /issue/<role>.
func (s *Server) pki(op, role, path string, req map[string]any, rawBody []byte) (any, *vaultError) {
	if op == "sign" {
		s.checkSignRequest(path, req, rawBody)
	}
	if !slices.Contains(s.cfg.Roles, role) {
		return nil, fail(http.StatusBadRequest, "unknown role: "+role)
	}
	if f := str(req, "format"); f != "" && f != "pem" && f != "pem_bundle" {
		return nil, fail(http.StatusBadRequest, fmt.Sprintf("unsupported format %q in this test server", f))
	}
	ttl, err := seconds(req["ttl"])
	if err != nil || ttl < 0 {
		return nil, fail(http.StatusBadRequest, fmt.Sprintf("error parsing ttl: %v", req["ttl"]))
	}
	var warnings []string
	switch {
	case ttl == 0:
		ttl = s.cfg.DefaultTTL
	case ttl > s.cfg.MaxTTL:
		warnings = append(warnings, fmt.Sprintf("TTL %q is longer than permitted maxTTL %q, so maxTTL is being used",
			ttl.String(), s.cfg.MaxTTL.String()))
		ttl = s.cfg.MaxTTL
	}

	var pub crypto.PublicKey
	var keyPEM string
	cn := str(req, "common_name")
	if op == "sign" {
		csr, verr := parseCSR(str(req, "csr"))
		if verr != nil {
			return nil, verr
		}
		pub = csr.PublicKey
		if csr.Subject.CommonName != "" { // use_csr_common_name defaults to true
			cn = csr.Subject.CommonName
		}
	} else {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fail(http.StatusInternalServerError, "generate key: "+err.Error())
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, fail(http.StatusInternalServerError, "marshal key: "+err.Error())
		}
		pub = key.Public()
		keyPEM = strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})))
	}
	if cn == "" {
		return nil, fail(http.StatusBadRequest, `the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false`)
	}

	tmpl := s.template(cn, ttl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cfg.CACert, pub, s.cfg.CAKey)
	if err != nil {
		return nil, fail(http.StatusInternalServerError, "create certificate: "+err.Error())
	}
	certPEM := strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	caPEM := s.caPEM
	serial, notAfter := tmpl.SerialNumber, tmpl.NotAfter
	colons := colonHex(serial)

	if op == "sign" {
		s.stats.Signs++
	} else {
		s.stats.Issues++
	}
	s.issued = append(s.issued, Issued{Op: op, Serial: serial, SerialColons: colons, CommonName: cn,
		NotBefore: tmpl.NotBefore, NotAfter: notAfter})

	data := map[string]any{
		"certificate":   certPEM,
		"issuing_ca":    caPEM,
		"ca_chain":      []string{caPEM},
		"serial_number": colons,
		"expiration":    notAfter.Unix(),
	}
	if op == "issue" {
		data["private_key"] = keyPEM
		data["private_key_type"] = "ec"
	}
	return envelope(data, nil, warnings, "pki"), nil
}

// checkSignRequest records a violation when a sign request carries anything
// that looks like a private key: the point of sign mode is that the key
// never leaves the client.
func (s *Server) checkSignRequest(path string, req map[string]any, rawBody []byte) {
	if bytes.Contains(rawBody, []byte("PRIVATE KEY")) {
		s.violation = append(s.violation, fmt.Sprintf("sign request to %s contains a PEM private key", path))
	}
	for k := range req {
		if !slices.Contains(signFields, k) {
			s.violation = append(s.violation, fmt.Sprintf("sign request to %s has unexpected field %q", path, k))
		}
	}
	if p, _ := pem.Decode([]byte(str(req, "csr"))); p != nil && p.Type != "CERTIFICATE REQUEST" {
		s.violation = append(s.violation, fmt.Sprintf("sign request to %s has a %q block in csr", path, p.Type))
	}
}

// template is a leaf certificate template as a PKI role with server_flag
// and client_flag issues it: backdated by not_before_duration, never past
// the CA's own NotAfter.
func (s *Server) template(cn string, ttl time.Duration) *x509.Certificate {
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(s.cfg.CACert.NotAfter) {
		notAfter = s.cfg.CACert.NotAfter
	}
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-notBeforeDuration),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// serverCertificate issues the HTTPS certificate of the server itself, for
// 127.0.0.1 and localhost.
func (s *Server) serverCertificate() (cryptotls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return cryptotls.Certificate{}, err
	}
	tmpl := s.template("vault", 24*time.Hour)
	tmpl.DNSNames = []string{"localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cfg.CACert, key.Public(), s.cfg.CAKey)
	if err != nil {
		return cryptotls.Certificate{}, err
	}
	return cryptotls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func parseCSR(text string) (*x509.CertificateRequest, *vaultError) {
	if text == "" {
		return nil, fail(http.StatusBadRequest, `"csr" is empty`)
	}
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, fail(http.StatusBadRequest, "csr contains no data")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "certificate request could not be parsed")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fail(http.StatusBadRequest, "request signature invalid")
	}
	return csr, nil
}

func randomSerial() *big.Int {
	var b [20]byte
	_, _ = rand.Read(b[:])
	b[0] &= 0x7f // positive
	b[0] |= 0x01 // and 20 bytes long
	return new(big.Int).SetBytes(b[:])
}

// colonHex formats n as Vault does: lower-case hex byte pairs joined by
// colons.
func colonHex(n *big.Int) string {
	b := n.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}

// kvRead implements GET /v1/<kv>/data/<path>.
func (s *Server) kvRead(path string) (any, *vaultError) {
	s.stats.KVReads++
	sec := s.kv[strings.Trim(path, "/")]
	if sec == nil {
		return nil, fail(http.StatusNotFound)
	}
	return envelope(map[string]any{
		"data": sec.data,
		"metadata": map[string]any{
			"created_time":    sec.created.Format(time.RFC3339Nano),
			"custom_metadata": nil,
			"deletion_time":   "",
			"destroyed":       false,
			"version":         sec.version,
		},
	}, nil, nil, "kv"), nil
}
