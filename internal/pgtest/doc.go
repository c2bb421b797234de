// Package pgtest starts real PostgreSQL clusters for integration tests: a
// primary and optionally a streaming replica on loopback ports, with TLS
// client-certificate authentication from a fresh development CA and,
// optionally, the Brownie metadata schema.
//
// It is an ordinary (non-_test) package so that the tests of every package
// can import it; it must not be imported by non-test code. It owns the
// temporary directory it creates and the clusters in it, all of which are
// stopped and removed by testing.TB cleanups. Cluster management itself lives
// in internal/pgcluster; certificates come from the sidecar's tls package.
package pgtest
