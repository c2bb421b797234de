package backup

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// CertsFromSource adapts the sidecar's certificate source to Deps.Certs:
// each call PEM-encodes the current bundle's chain, its private key
// (PKCS #8) and its CA certificates, after checking that the certificate is
// valid now. The returned function is safe for concurrent use and keeps
// nothing; the caller of it owns the returned bytes.
func CertsFromSource(src brownietls.Source) CertsFunc {
	return func() (certPEM, keyPEM, caPEM []byte, err error) {
		b, err := src.Current()
		if err != nil {
			return nil, nil, nil, err
		}
		if err := b.ValidAt(time.Now()); err != nil {
			return nil, nil, nil, err
		}
		if len(b.Certificate.Certificate) == 0 || b.Certificate.PrivateKey == nil {
			return nil, nil, nil, errors.New("client certificate bundle has no certificate or key")
		}
		if len(b.CAs) == 0 {
			return nil, nil, nil, errors.New("client certificate bundle has no CA to verify the servers")
		}
		for _, der := range b.Certificate.Certificate {
			certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		der, err := x509.MarshalPKCS8PrivateKey(b.Certificate.PrivateKey)
		if err != nil {
			// The error names the key type only.
			return nil, nil, nil, fmt.Errorf("encode client key: %w", err)
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		for _, ca := range b.CAs {
			caPEM = append(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})...)
		}
		return certPEM, keyPEM, caPEM, nil
	}
}
