// Package tls owns the sidecar's upstream client certificates: the sources
// that load and refresh them (FileSource watches LOCAL_CERT_DIR; VaultSource
// obtains short-lived certificates from Vault's PKI engine, or a bundle from
// KV v2, and refreshes them ahead of expiry) and the development CA that
// mints certificates for local runs and tests.
//
// The package authenticates to Postgres with client certificates only; it
// knows nothing about passwords, sockets or the wire protocol. It must never
// do I/O in GetClientCertificate, which is called inside TLS handshakes and
// only reads an atomic pointer, and it must never log or return private key
// material: errors and logs name paths, serials and validity dates only. The
// same holds for Vault credentials: tokens, service-account JWTs and AppRole
// secret ids are never logged or put in errors. VaultSource talks to Vault
// only through github.com/hashicorp/vault/api.
//
// The package name shadows crypto/tls; importers alias one of the two, and
// this package imports crypto/tls as cryptotls.
package tls
