package fanout

import (
	"cmp"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/twophase"
)

// Writes spanning shards commit in two phases, so that they commit on
// every shard or on none: the anchor (the first leg in shard-map order)
// prepares first with the write's decision row, then the other legs; the
// anchor's COMMIT PREPARED is the decision, then the other legs commit.
// Package twophase owns the identifiers, the statements and the protocol's
// description (its doc.go), and the recovery that finishes the parts a
// sidecar left prepared; this file drives a request's legs through it.

// commit ends a wrapped write (a write outside a transaction, run on every
// leg — a fan-out has two or more — inside BEGIN): when every leg
// succeeded and the client is still there it commits in two phases; else
// it rolls back everywhere.
func (f *Request) commit() error {
	ok := !f.failed && !f.clientGone
	for _, l := range f.legs {
		ok = ok && l.status == 'T'
	}
	if !ok {
		return f.each(f.legs, func(*leg) string { return "ROLLBACK" })
	}
	return f.commitTwoPhase()
}

// commitTwoPhase commits a write on several legs in two phases (see
// package twophase). Only a leg lost before the decision, or the anchor
// lost while deciding, ends the session (08006; 08007 when the outcome is
// unknown); otherwise the client hears the outcome as it would from one
// server: nothing for a commit, the first error for a rollback.
func (f *Request) commitTwoPhase() error {
	m := f.env.Deps.Metrics.TwoPhaseCommits
	anchor, others := f.legs[0], f.legs[1:]
	gid := twophase.NewGID(anchor.c.Target().Shard)

	// Phase 1: the anchor first, with the decision row.
	err := f.each(f.legs[:1], func(*leg) string { return twophase.PrepareAnchor(gid) })
	if err == nil && !anchor.failed {
		err = f.each(others, func(*leg) string { return twophase.Prepare(gid) })
	}
	prepared := err == nil
	for _, l := range f.legs {
		l.prepared = !l.broken && !l.failed && l.status == 'I'
		prepared = prepared && l.prepared
	}
	if !prepared {
		if anchor.failed && pgerr.Code(wire.ErrorField(f.firstErr, 'C')) == pgerr.UndefinedTable {
			e := pgerr.Errorf(pgerr.UndefinedTable, "writes spanning shards need table brownie_sidecar.commit_log on shard %s", anchor.c.Target().Shard)
			e.Hint = "apply deploy/sql/02_sidecar.sql to every shard primary"
			f.firstErr = e.Encode(nil)[5:]
		}
		f.abandon(gid)
		m.WithLabelValues("rolled_back").Inc()
		if err != nil {
			return err // nothing committed; a part prepared on the lost leg has no decision and is rolled back
		}
		f.sendError(nil)
		return nil
	}

	// Phase 2: the anchor's commit is the decision.
	if err := f.each(f.legs[:1], func(*leg) string { return twophase.CommitPrepared(gid) }); err != nil {
		m.WithLabelValues("unknown").Inc()
		f.env.Log.Error("connection to the anchor shard lost while committing a write spanning shards; the recovery finishes it",
			zap.String("gid", gid), zap.String("anchor", anchor.c.Target().Shard), zap.Error(err))
		e := pgerr.Fatalf(pgerr.TransactionUnknown, "the connection to shard %s broke while committing a write spanning shards: whether it committed is unknown", anchor.c.Target().Shard)
		e.Detail = "transaction " + gid + " is committed or rolled back on every shard within TWO_PHASE_TIMEOUT"
		return e
	}
	if anchor.failed { // most likely a recovery rolled the anchor back first
		f.abandon(gid)
		m.WithLabelValues("rolled_back").Inc()
		e := pgerr.Errorf(pgerr.TransactionRollback, "the write spanning shards was rolled back: its part on shard %s was no longer prepared when committing", anchor.c.Target().Shard)
		e.Detail = "a sidecar's recovery rolls back parts left prepared longer than TWO_PHASE_TIMEOUT"
		e.Retryable = true
		f.sendError(e.Encode(nil)[5:])
		return nil
	}
	m.WithLabelValues("committed").Inc()
	f.noteCommitted()
	// Committed. A leg failing to commit its part now is left to the
	// recovery, which commits it (the decision row is there); 42704 means a
	// recovery already did.
	if err := f.each(others, func(*leg) string { return twophase.CommitPrepared(gid) }); err != nil {
		f.env.Log.Warn("a shard's part of a committed write spanning shards is left to the recovery", zap.String("gid", gid), zap.Error(err))
	}
	return nil
}

// abandon rolls back every leg of a write that did not reach its decision:
// ROLLBACK PREPARED where its part is prepared, ROLLBACK where the
// transaction is still open. A leg lost here leaves its prepared part to
// the recovery, which rolls it back (it has no decision row).
func (f *Request) abandon(gid string) {
	_ = f.each(f.legs, func(l *leg) string {
		switch {
		case l.prepared:
			return twophase.RollbackPrepared(gid)
		case l.status == 'T' || l.status == 'E':
			return "ROLLBACK"
		}
		return ""
	})
}

// each sends the simple query q(l) to every leg that is not broken (and
// for which q is not empty), then reads each one's answer up to
// ReadyForQuery; l.failed says whether it failed. It returns the error of
// the first leg lost, after serving the others.
func (f *Request) each(legs []*leg, q func(*leg) string) error {
	var first error
	sent := make([]*leg, 0, len(legs))
	for _, l := range legs {
		sql := ""
		if !l.broken {
			sql = q(l)
		}
		if sql == "" {
			continue
		}
		l.done, l.failed = false, false
		l.c.Parsed("", false) // a simple Query drops the server's unnamed statement
		if err := f.write(l, wire.AppendQuery(nil, sql)); err != nil {
			first = cmp.Or(first, err)
			continue
		}
		sent = append(sent, l)
	}
	for _, l := range sent {
		if err := f.readToReady(l); err != nil {
			first = cmp.Or(first, err)
		}
	}
	return first
}

// noteCommitted records the write on every leg's shard for read-your-writes.
func (f *Request) noteCommitted() {
	now := time.Now()
	for _, l := range f.legs {
		f.env.Session.Wrote(l.c.Target().Shard, now)
	}
}
