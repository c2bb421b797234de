// Package wire frames the Postgres v3 protocol for relaying: it reads the
// untyped startup packets and typed message headers, and hands message
// bodies to the caller either buffered (for the few messages the sidecar
// decodes) or as a stream (for everything else, so a 64 MiB DataRow never
// has to fit in memory twice).
//
// It owns no sockets and starts no goroutines; a Reader or Writer belongs to
// the one goroutine that uses it.
package wire
