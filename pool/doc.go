// Package pool keeps upstream connections for one target (shard, role,
// database, user) and hands them out with a bounded, first-come first-served
// wait.
//
// It knows nothing about SQL or the wire protocol: resources are created by
// an injected Dialer and are opaque apart from Close and the credential
// Generation they were made with. Callers decide when a connection is clean
// enough to Release; anything in doubt must be Destroyed.
package pool
