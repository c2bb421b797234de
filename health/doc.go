// Package health keeps track of every host of the shard map, beside the
// router: it checks each host periodically over a connection of its own,
// chooses each shard's primary (following a standby promoted in place of
// the map's primary), measures replica lag, bans replicas that failed, and
// remembers the primaries' recent WAL positions for read-your-writes.
//
// It owns:
//   - the check loop (Checker.Run) and its connections, one per host,
//     outside the pools, dialled through the injected Deps.Dial and
//     borrowed by other sidecar-internal work on a host (Checker.OnHost);
//   - an immutable snapshot of every host's health, swapped whole after
//     each round, which routing reads without locks (Checker.Primary,
//     Checker.PrimaryOK, Checker.Replica);
//   - replica bans (Checker.Ban), readiness (Checker.Ready), the operator's
//     view (Checker.Status) and the host metrics (up, role, lag, failovers).
//
// It must not touch client sockets, sessions or pools: package proxy owns
// those and asks this package where writes and reads may go. It knows the
// wire protocol only through the small Conn interface the proxy
// implements, and decides nothing about statements: that is package
// router's job.
package health
