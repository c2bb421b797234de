package tls

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// fetchPKI asks the PKI engine for a certificate: op is "sign" (a CSR for
// a key generated here, which never leaves the process) or "issue" (Vault
// generates the key and returns it once). The caller holds s.io.
func (s *VaultSource) fetchPKI(ctx context.Context, op string) (*Bundle, error) {
	body := map[string]any{"common_name": s.cfg.CommonName, "format": "pem"}
	if s.cfg.TTL > 0 {
		body["ttl"] = fmt.Sprintf("%ds", int64(s.cfg.TTL/time.Second))
	}
	var key crypto.Signer
	if op == "sign" {
		k, csrPEM, err := newKeyAndCSR(s.cfg.CommonName)
		if err != nil {
			return nil, err
		}
		key = k
		body["csr"] = string(csrPEM)
	}
	path := s.cfg.PKIMount + "/" + op + "/" + s.cfg.PKIRole
	secret, err := vaultCall(ctx, s, func() (*api.Secret, error) {
		return s.client.Logical().WriteWithContext(ctx, path, body)
	})
	if err != nil {
		return nil, s.vaultError(op, path, err)
	}
	return s.pkiBundle(op, path, secret, key)
}

// newKeyAndCSR generates an ECDSA P-256 key and a PEM certificate request
// for commonName signed by it.
func newKeyAndCSR(commonName string) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader,
		&x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate request: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// pkiBundle builds a bundle from a sign or issue response. key is the
// locally generated key in sign mode, nil in issue mode.
func (s *VaultSource) pkiBundle(op, path string, secret *api.Secret, key crypto.Signer) (*Bundle, error) {
	where := fmt.Sprintf("vault %s %s", op, path)
	if secret == nil || secret.Data == nil {
		return nil, &CertError{Reason: ReasonParse, Msg: where + ": response has no data"}
	}
	certPEM, _ := secret.Data["certificate"].(string)
	chain, err := parseCertificates([]byte(certPEM))
	if err != nil {
		return nil, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: data.certificate: %v", where, err)}
	}
	if key == nil {
		keyPEM, _ := secret.Data["private_key"].(string)
		if key, err = parsePrivateKey([]byte(keyPEM)); err != nil {
			return nil, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: data.private_key: %v", where, err)}
		}
	}
	var caPEM []byte
	if v, _ := secret.Data["issuing_ca"].(string); v != "" {
		caPEM = append(caPEM, v...)
		caPEM = append(caPEM, '\n')
	}
	if list, _ := secret.Data["ca_chain"].([]any); len(list) > 0 {
		for _, v := range list {
			if p, _ := v.(string); p != "" {
				caPEM = append(caPEM, p...)
				caPEM = append(caPEM, '\n')
			}
		}
	}
	var cas []*x509.Certificate
	if len(caPEM) > 0 {
		if cas, err = parseCertificates(caPEM); err != nil {
			return nil, &CertError{Reason: ReasonCA, Msg: fmt.Sprintf("%s: issuing_ca or ca_chain: %v", where, err)}
		}
	}
	b, _, err := s.assemble(where, chain, key, cas)
	if err != nil {
		return nil, err
	}
	b.fingerprint = fingerprint(b.Leaf.Raw)
	return b, nil
}

// fetchKV reads the KV v2 bundle. The caller holds s.io.
func (s *VaultSource) fetchKV(ctx context.Context) (*Bundle, int, error) {
	apiPath := s.kvMount + "/data/" + s.kvPath
	kvs, err := vaultCall(ctx, s, func() (*api.KVSecret, error) {
		return s.client.KVv2(s.kvMount).Get(ctx, s.kvPath)
	})
	if err != nil {
		return nil, 0, s.vaultError("kv read", apiPath, err)
	}
	where := "vault kv read " + apiPath
	if kvs == nil || kvs.Data == nil {
		return nil, 0, &CertError{Reason: ReasonNotFound, Msg: where + ": the latest version is deleted"}
	}
	version := 0
	if kvs.VersionMetadata != nil {
		version = kvs.VersionMetadata.Version
	}
	certPEM, err := kvPEM(where, kvs.Data, "client_cert", true)
	if err != nil {
		return nil, version, err
	}
	keyPEM, err := kvPEM(where, kvs.Data, "client_key", true)
	if err != nil {
		return nil, version, err
	}
	caPEM, err := kvPEM(where, kvs.Data, "ca_cert", s.cfg.UpstreamCAFile == "")
	if err != nil {
		return nil, version, err
	}
	chain, err := parseCertificates(certPEM)
	if err != nil {
		return nil, version, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: client_cert: %v", where, err)}
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, version, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: client_key: %v", where, err)}
	}
	var cas []*x509.Certificate
	if len(caPEM) > 0 {
		if cas, err = parseCertificates(caPEM); err != nil {
			return nil, version, &CertError{Reason: ReasonCA, Msg: fmt.Sprintf("%s: ca_cert: %v", where, err)}
		}
	}
	b, caFile, err := s.assemble(where, chain, key, cas)
	if err != nil {
		return nil, version, err
	}
	b.fingerprint = fingerprint(certPEM, keyPEM, caPEM, caFile)
	return b, version, nil
}

// kvPEM returns the PEM held in data[name], which may be PEM text or base64
// of PEM text (as the original system stored it). Errors never quote the
// value.
func kvPEM(where string, data map[string]any, name string, required bool) ([]byte, error) {
	raw, ok := data[name]
	if !ok || raw == nil || raw == "" {
		if !required {
			return nil, nil
		}
		return nil, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: key %q is missing", where, name)}
	}
	v, ok := raw.(string)
	if !ok {
		return nil, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: key %q is not a string", where, name)}
	}
	if strings.Contains(v, "-----BEGIN ") {
		return []byte(v), nil
	}
	compact := strings.Join(strings.Fields(v), "")
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if dec, err := enc.DecodeString(compact); err == nil && bytes.Contains(dec, []byte("-----BEGIN ")) {
			return dec, nil
		}
	}
	return nil, &CertError{Reason: ReasonParse, Msg: fmt.Sprintf("%s: key %q is neither PEM nor base64 of PEM", where, name)}
}

// assemble checks that key matches the leaf and builds an unpublished
// bundle: the chain presented upstream is the leaf plus any intermediates
// (certificates that are not self-signed) from chain and cas; Roots are the
// UpstreamCAFile when set (whose content is returned too), else cas.
func (s *VaultSource) assemble(where string, chain []*x509.Certificate, key crypto.Signer, cas []*x509.Certificate) (*Bundle, []byte, error) {
	leaf := chain[0]
	serial := leaf.SerialNumber.Text(16)
	if !publicKeysMatch(leaf, key) {
		return nil, nil, &CertError{Reason: ReasonMismatch,
			Msg: fmt.Sprintf("%s: private key does not match certificate serial %s", where, serial)}
	}
	der := [][]byte{leaf.Raw}
	seen := map[string]bool{string(leaf.Raw): true}
	for _, c := range slices.Concat(chain[1:], cas) {
		if seen[string(c.Raw)] || isSelfSigned(c) {
			continue
		}
		seen[string(c.Raw)] = true
		der = append(der, c.Raw)
	}
	var rootsPEM []byte
	if s.cfg.UpstreamCAFile != "" {
		data, err := readFile("upstream CA certificate", s.cfg.UpstreamCAFile)
		if err != nil {
			return nil, nil, err
		}
		if cas, err = parseCertificates(data); err != nil {
			return nil, nil, &CertError{Reason: ReasonCA, path: s.cfg.UpstreamCAFile,
				Msg: fmt.Sprintf("parse upstream CA certificate %s: %v", s.cfg.UpstreamCAFile, err)}
		}
		rootsPEM = data
	}
	if len(cas) == 0 {
		return nil, nil, &CertError{Reason: ReasonCA,
			Msg: where + ": no CA certificate to verify the upstream server (Vault returned none; set VAULT_CA_FILE)"}
	}
	return newBundle(der, key, leaf, cas), rootsPEM, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
