// Package conformance runs database drivers' own test suites through the
// sidecar and compares their failures with a committed list of expected
// failures, each with its reason.
//
// The package itself holds the pure parts: reading `go test -json` output
// into top-level test outcomes, reading the expected-failures file and
// comparing the two. Its tests start a real cert-only Postgres, the
// sidecar in process, and pgx v5's suite from the module cache (the
// version in go.mod) as a subprocess; the suite runs only when the test is
// given -conformance (make test-conformance). It touches no sidecar
// internals: the sidecar is driven as a user drives it, through its
// configuration and its client port.
package conformance
