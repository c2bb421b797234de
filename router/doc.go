// Package router decides where a statement goes in a sharded Brownie
// cluster. It is pure and synchronous: (session facts, statement) →
// decision. It opens no sockets, starts no goroutines, reads no files
// except in LoadMap, and never blocks on I/O; health, replica lag and
// read-your-writes belong to package health, map-file watching to
// internal/app, and the execution of fan-outs to the proxy.
//
// It owns:
//   - the shard map model and its YAML format (ParseMap, LoadMap), an
//     immutable snapshot behind an atomic pointer, swapped whole on reload
//     (Router.Swap);
//   - placement: PostgreSQL's own hash-partition function of the team key
//     (uuid, bigint or text), so that shard i holds exactly the keys a
//     PARTITION BY HASH (MODULUS n, REMAINDER i) table would, with per-team
//     overrides winning over the hash (Key.Hash, ShardIndex, Router.Place);
//   - key extraction with the PostgreSQL parser (pg_query): each distinct
//     statement text is compiled once into a StmtPlan that records where
//     each sharded table's keys come from (literals, or Bind parameters in
//     text or binary format), kept in a bounded cache per map snapshot;
//   - routing hints (SET brownie.*, leading /* brownie:… */ comments,
//     startup options), validated and never spliced into SQL, and the
//     tenant guard that refuses a statement naming another team than the
//     session's brownie.team_id;
//   - the decision: one shard, some or all shards, or any shard, whether a
//     replica may serve it, and why (Router.Route).
//
// It must not touch sockets, pools, metrics or logs: callers record
// Decision.Reason and Decision.Explain themselves.
package router
