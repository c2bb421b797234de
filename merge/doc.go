// Package merge makes a read that runs on several shards (a fan-out)
// return what one database holding all the rows would: it plans the merge
// of one statement (Analyze), rewrites the statement the shards run
// (Plan.ShardSQL), turns the shards' RowDescription into the client's
// (Plan.Describe), and merges the shards' DataRows (Plan.Run).
//
// It owns the exact semantics of the top-level ORDER BY (k-way merge, with
// PostgreSQL's comparison per type in text and binary wire formats: integers,
// numeric, floating point with NaN, boolean, C-collation text, uuid, bytea,
// date and time types, interval, jsonb, enums by pg_enum.enumsortorder),
// LIMIT/OFFSET/FETCH FIRST (WITH TIES), the aggregates count, sum, min, max,
// avg, bool_and, bool_or and every with GROUP BY, DISTINCT, DISTINCT ON and
// UNION; and the refusal, as 0A000 errors naming the construct, of whatever
// it cannot merge exactly (window functions, HAVING, other aggregates,
// INTERSECT...).
//
// It is pure: it knows no sockets, sessions, pools, shard maps, metrics or
// logs, and starts no goroutines. Its inputs are statement text, Bind
// parameters and format codes, and wire message bodies (the bytes after
// the 5-byte header); its outputs are statement text and message bodies.
// It must not touch the connections: the proxy sends ShardSQL, reads the
// shards, feeds their rows through Source, writes what Run emits, and
// drains whatever Run left unread.
//
// Assumptions the caller guarantees: every shard has the same schema; text
// is compared bytewise, which is the order of the shards' collation only
// when it is "C" and the client encoding is the server encoding; text
// date and time values are in DateStyle ISO and intervals in IntervalStyle
// postgres (binary values need neither). Only the top-level query is
// merged: subqueries and CTEs run on each shard over that shard's rows.
package merge
