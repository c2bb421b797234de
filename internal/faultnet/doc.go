// Package faultnet is a TCP relay for fault-injection tests: it listens on
// 127.0.0.1, forwards every connection to one target address, and can
// pause its connections (stop forwarding while keeping the sockets open,
// as a host whose packets are dropped), delay what it forwards, and reset
// every connection. Tests put it between the sidecar and one Postgres
// host.
//
// It owns its listener, its connections and the goroutines that copy
// between them; Close ends all of them. It knows nothing of Postgres.
package faultnet
