// Package dbmetrics exports database and Brownie entity gauges read from
// every shard's primary: database size, table sizes, connections by state,
// and the counts of organizations, teams, users, incidents, open incidents
// and agent configurations, each labelled with its shard (never with a
// team).
//
// Every sidecar of a cluster runs a Collector, but only one collects: the
// one holding an advisory lock on the first shard's primary (the election
// of scheduled backups, with another key). It keeps the lock while it
// lives, checks it each round and, when the lock is lost, stops exporting
// the gauges until it wins again, so the cluster exports one set of values.
//
// The package owns its collection loop, the connections it opens for one
// round (closed at the end of the round) and the lock it holds. It does
// not route, pool or touch client sessions; connections and the election
// come from its Deps.
package dbmetrics
