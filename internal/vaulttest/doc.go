// Package vaulttest is an in-process stand-in for HashiCorp Vault, for
// tests. It serves, over net/http/httptest, exactly the subset of Vault's
// documented HTTP API that the sidecar uses, with Vault's paths, request and
// response JSON, error bodies ({"errors":[...]}) and status codes:
//
//	PUT|POST /v1/<pki>/sign/<role>        PKI sign (csr, common_name, ttl, format)
//	PUT|POST /v1/<pki>/issue/<role>       PKI issue (common_name, ttl, format)
//	GET      /v1/<kv>/data/<path>         KV v2 read
//	PUT|POST /v1/auth/<k8s>/login         Kubernetes login (role, jwt)
//	PUT|POST /v1/auth/<approle>/login     AppRole login (role_id, secret_id)
//	PUT|POST /v1/auth/token/renew-self    token renewal (increment)
//	GET      /v1/auth/token/lookup-self   token lookup
//
// Tokens travel in X-Vault-Token and namespaces in X-Vault-Namespace, as
// with Vault. Certificates are real X.509 certificates signed by a test CA
// with the requested TTL (capped at a role maximum), so Postgres accepts
// them. Tests can seal the server (503), stop and restart its listener on
// the same address (connection refused in between), expire or revoke
// tokens, change the accepted credentials, and read counters, the issued
// serials and any protocol violations (such as a private key in a sign
// request).
//
// It is an ordinary (non-_test) package so that the tests of every package
// can import it; it must not be imported by non-test code. A Server owns its
// listener and its state, is safe for concurrent use, and is stopped by a
// testing.TB cleanup.
package vaulttest
