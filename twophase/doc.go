// Package twophase owns the shard-independent parts of the two-phase
// commit that makes a write spanning shards commit on every shard or on
// none: the transaction identifier scheme, the text of the decision
// protocol's statements, and the recovery that every sidecar runs to finish
// the prepared parts a sidecar left behind.
//
// The protocol. Package proxy drives it over a request's own connections:
//
//  1. Prepare. The first leg in shard-map order, the anchor, inserts the
//     write's decision row into brownie_sidecar.commit_log inside its own
//     transaction and runs PREPARE TRANSACTION (PrepareAnchor); only then
//     do the other legs prepare (Prepare). So a part prepared on any shard
//     has its anchor part prepared or already decided.
//  2. Decide. COMMIT PREPARED on the anchor (CommitPrepared) commits its
//     part and the decision row at once: from then on the write is
//     committed, and the other legs commit next.
//
// Any failure before the decision rolls every leg back (RollbackPrepared
// where a part is prepared). A sidecar that dies (or loses a connection)
// halfway leaves prepared parts behind; every sidecar's Recovery finishes
// them, once prepared for half of TWO_PHASE_TIMEOUT, from what the anchor
// says: a part whose anchor committed (its row is visible) is committed,
// one whose anchor rolled back is rolled back, and an anchor left prepared
// longer than TWO_PHASE_TIMEOUT is presumed abandoned and rolled back
// first. Postgres orders a late COMMIT PREPARED and the recovery's
// ROLLBACK PREPARED of the same anchor: whichever comes second fails, and
// its side follows the other's decision. Several sidecars may recover at
// once. The transaction identifier, "brownie:<random hex>:<anchor shard>"
// (NewGID, Anchor), is what lets any sidecar find a part's anchor.
//
// It owns:
//   - the identifier scheme (NewGID, Anchor);
//   - the statements of each phase, with the identifier quoted as a
//     literal (PrepareAnchor, Prepare, CommitPrepared, RollbackPrepared);
//   - the recovery (Recovery.Run): the scan of pg_prepared_xacts on every
//     shard primary, the decisions, and the deletion of decision rows no
//     part needs any more.
//
// It must not touch client sockets, pools or sessions: package proxy owns
// those, drives the protocol over a request's connections, and lends the
// recovery its health checker's connection to each shard's primary
// (Deps.OnPrimary). It knows the wire protocol only through health.Conn.
package twophase
