// Package fanout runs one client request on several shards' connections
// and merges their answers into what one database would have answered,
// and holds the legs of client transactions that span shards.
//
// A Request is one client request — a simple Query, or the
// extended-protocol messages from a Bind up to Sync — sent to every leg
// at once and answered leg after leg in shard-map order: rows are
// streamed to the client as they come (or merged by package merge for
// ORDER BY, LIMIT, aggregates and DISTINCT), command tags are summed,
// the first error wins. A write outside any transaction is wrapped in
// BEGIN on every leg and committed in two phases (package twophase) or
// rolled back everywhere. COPY FROM STDIN into a sharded table is split
// row by row by key. A Tx is a client transaction spanning shards: one
// leg per shard its statements needed, ended by a commit on one leg or in
// two phases.
//
// The package sees the session it serves only through small interfaces
// defined here: Conn (a leg's upstream connection), Client (the client
// socket), Session (connections, settings and bookkeeping of the client's
// session) and Stmt (a statement the client prepared). It owns no
// sockets, starts no goroutine that outlives a call, and never decides
// where a statement goes: package proxy routes, runs the session's state
// machine, holds the client socket, the pools and upstream dialing, and
// hands a request its plan and connections. Every Request and Tx belongs
// to the one session goroutine that made it.
package fanout
