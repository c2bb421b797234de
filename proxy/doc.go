// Package proxy owns the client sockets: it accepts connections on TCP and
// Unix listeners, negotiates the startup (TLS, protocol version, client
// authentication), attaches each session to an upstream connection from a
// pool, and relays protocol messages in both directions.
//
// It is the only package that touches client sockets. It decides when an
// upstream connection is at a protocol-safe point (last client message was
// Sync, Query, CopyDone or CopyFail, every ReadyForQuery received, status
// idle) and only then returns it to its pool; in any doubt it destroys it.
// Routing decisions come from package router; which host is a shard's
// primary and which replica may serve a read from package health (whose
// checker the proxy owns, dialling its connections and lending them to
// two-phase recovery); upstream certificates from package tls; the pool
// from package pool.
//
// A session holds at most one attached upstream, relayed by its relay
// goroutine (relay.go), and moves between targets only at a safe point
// (route.go). A request the router sends to several shards, and a
// transaction that needs a second shard, are package fanout's (a
// fanout.Request, a fanout.Tx): this package decides that a message goes
// there, takes the legs' connections and runs the session's state machine
// around them (fanout.go, xact.go); fanconn.go gives fanout its view of
// the session's upstreams, client socket and bookkeeping.
// A CancelRequest reaches only the request it was sent for (cancel.go):
// the backend running it is held until the cancel is delivered or
// dropped, and a request still waiting for a connection is cancelled in
// the pool's queue.
package proxy
