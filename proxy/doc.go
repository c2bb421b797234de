// Package proxy owns the client sockets: it accepts connections on TCP and
// Unix listeners, negotiates the startup (TLS, protocol version, client
// authentication), attaches each session to an upstream connection from a
// pool, and relays protocol messages in both directions.
//
// It is the only package that touches client sockets. It decides when an
// upstream connection is at a protocol-safe point (last client message was
// Sync, Query, CopyDone or CopyFail, every ReadyForQuery received, status
// idle) and only then returns it to its pool; in any doubt it destroys it.
// Routing decisions come from package router; upstream certificates from
// package tls; the pool from package pool.
package proxy
