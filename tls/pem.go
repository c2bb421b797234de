package tls

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// readFile reads path fully and turns failures into a read CertError.
func readFile(what, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		cause := err
		var pe *fs.PathError
		if errors.As(err, &pe) {
			cause = pe.Err
		}
		return nil, &CertError{Reason: ReasonRead, path: path, err: err,
			Msg: fmt.Sprintf("read %s %s: %v", what, path, cause)}
	}
	return data, nil
}

// parseCertificates returns every CERTIFICATE block in data, in order. Other
// block types are skipped without being echoed, because they may be keys.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate PEM block found")
	}
	return certs, nil
}

// parsePrivateKey returns the first private key in data, accepting PKCS#1,
// PKCS#8 and SEC 1 (EC) encodings. Its errors never include key bytes or the
// parser's own message, which could quote them.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no supported private key PEM block found")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue // EC PARAMETERS, certificates and the like
		}
		if err != nil {
			return nil, errors.New("malformed private key (want PKCS#1, PKCS#8 or EC)")
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, errors.New("private key type cannot sign")
		}
		return signer, nil
	}
}

// publicKeysMatch reports whether the certificate's public key belongs to key.
func publicKeysMatch(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}
