package proxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// Writes spanning shards commit in two phases, so that they commit on
// every shard or on none.
//
//  1. Prepare. The first leg in shard-map order, the anchor, inserts the
//     write's decision row into brownie_sidecar.commit_log inside its own
//     transaction and runs PREPARE TRANSACTION; only then do the other legs
//     prepare. So a part prepared on any shard has its anchor part
//     prepared or already decided.
//  2. Decide. COMMIT PREPARED on the anchor commits its part and the
//     decision row at once: from then on the write is committed, and the
//     other legs commit next.
//
// Any failure before the decision rolls every leg back. A sidecar that dies
// (or loses a connection) halfway leaves prepared parts behind; every
// sidecar's recovery (recoverTwoPhase) finishes them, once prepared for
// half of TWO_PHASE_TIMEOUT, from what the anchor says: a part whose anchor committed (its row is visible) is committed,
// one whose anchor rolled back is rolled back, and an anchor left prepared
// longer than TWO_PHASE_TIMEOUT is presumed abandoned and rolled back
// first. Postgres orders a late COMMIT PREPARED and the recovery's ROLLBACK
// PREPARED of the same anchor: whichever comes second fails, and its side
// follows the other's decision. Several sidecars may recover at once.

// gidPrefix starts the identifier of every transaction the sidecar
// prepares: "brownie:<random hex>:<anchor shard>".
const gidPrefix = "brownie:"

// newGID returns a fresh transaction identifier naming the anchor shard.
func newGID(anchor string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return gidPrefix + hex.EncodeToString(b[:]) + ":" + anchor
}

// gidAnchor returns the anchor shard named in a transaction identifier the
// sidecar made.
func gidAnchor(gid string) (string, bool) {
	rest, ok := strings.CutPrefix(gid, gidPrefix)
	if !ok {
		return "", false
	}
	_, anchor, ok := strings.Cut(rest, ":")
	return anchor, ok && anchor != ""
}

// commit ends a wrapped write (a write outside a transaction, run on every
// leg — a fan-out has two or more — inside BEGIN): when every leg
// succeeded and the client is still there it commits in two phases; else
// it rolls back everywhere.
func (f *fanOut) commit() error {
	ok := !f.failed && !f.clientGone
	for _, l := range f.legs {
		ok = ok && l.status == 'T'
	}
	if !ok {
		return f.each(f.legs, func(*fanLeg) string { return "ROLLBACK" })
	}
	return f.commitTwoPhase()
}

// commitTwoPhase commits a write on several legs in two phases (see the
// top of this file). Only a leg lost before the decision, or the anchor
// lost while deciding, ends the session (08006; 08007 when the outcome is
// unknown); otherwise the client hears the outcome as it would from one
// server: nothing for a commit, the first error for a rollback.
func (f *fanOut) commitTwoPhase() error {
	m := f.ss.srv.metrics.TwoPhaseCommits
	anchor, others := f.legs[0], f.legs[1:]
	gid := newGID(anchor.u.target.Shard)
	g := quoteLiteral(gid)

	// Phase 1: the anchor first, with the decision row.
	err := f.each(f.legs[:1], func(*fanLeg) string {
		return "INSERT INTO brownie_sidecar.commit_log (gid) VALUES (" + g + "); PREPARE TRANSACTION " + g
	})
	if err == nil && !anchor.failed {
		err = f.each(others, func(*fanLeg) string { return "PREPARE TRANSACTION " + g })
	}
	prepared := err == nil
	for _, l := range f.legs {
		l.prepared = !l.broken && !l.failed && l.status == 'I'
		prepared = prepared && l.prepared
	}
	if !prepared {
		if anchor.failed && upstreamError(f.firstErr).Code == pgerr.UndefinedTable {
			e := pgerr.Errorf(pgerr.UndefinedTable, "writes spanning shards need table brownie_sidecar.commit_log on shard %s", anchor.u.target.Shard)
			e.Hint = "apply deploy/sql/02_sidecar.sql to every shard primary"
			f.firstErr = e.Encode(nil)[5:]
		}
		f.abandon(g)
		m.WithLabelValues("rolled_back").Inc()
		if err != nil {
			return err // nothing committed; a part prepared on the lost leg has no decision and is rolled back
		}
		f.sendError(nil)
		return nil
	}

	// Phase 2: the anchor's commit is the decision.
	if err := f.each(f.legs[:1], func(*fanLeg) string { return "COMMIT PREPARED " + g }); err != nil {
		m.WithLabelValues("unknown").Inc()
		f.ss.log.Error("connection to the anchor shard lost while committing a write spanning shards; the recovery finishes it",
			zap.String("gid", gid), zap.String("anchor", anchor.u.target.Shard), zap.Error(err))
		e := pgerr.Fatalf(pgerr.TransactionUnknown, "the connection to shard %s broke while committing a write spanning shards: whether it committed is unknown", anchor.u.target.Shard)
		e.Detail = "transaction " + gid + " is committed or rolled back on every shard within TWO_PHASE_TIMEOUT"
		return e
	}
	if anchor.failed { // most likely a recovery rolled the anchor back first
		f.abandon(g)
		m.WithLabelValues("rolled_back").Inc()
		e := pgerr.Errorf(pgerr.TransactionRollback, "the write spanning shards was rolled back: its part on shard %s was no longer prepared when committing", anchor.u.target.Shard)
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
	if err := f.each(others, func(*fanLeg) string { return "COMMIT PREPARED " + g }); err != nil {
		f.ss.log.Warn("a shard's part of a committed write spanning shards is left to the recovery", zap.String("gid", gid), zap.Error(err))
	}
	return nil
}

// abandon rolls back every leg of a write that did not reach its decision:
// ROLLBACK PREPARED where its part is prepared, ROLLBACK where the
// transaction is still open. A leg lost here leaves its prepared part to
// the recovery, which rolls it back (it has no decision row).
func (f *fanOut) abandon(g string) {
	_ = f.each(f.legs, func(l *fanLeg) string {
		switch {
		case l.prepared:
			return "ROLLBACK PREPARED " + g
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
func (f *fanOut) each(legs []*fanLeg, q func(*fanLeg) string) error {
	var first error
	sent := make([]*fanLeg, 0, len(legs))
	for _, l := range legs {
		sql := ""
		if !l.broken {
			sql = q(l)
		}
		if sql == "" {
			continue
		}
		l.done, l.failed = false, false
		if err := f.write(l, appendQuery(nil, sql)); err != nil {
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
func (f *fanOut) noteCommitted() {
	now := time.Now()
	f.ss.mu.Lock()
	defer f.ss.mu.Unlock()
	for _, l := range f.legs {
		f.ss.wroteLocked(l.u.target.Shard, now)
	}
}

// startTwoPhaseRecovery runs recoverTwoPhase until ctx ends.
func (s *Server) startTwoPhaseRecovery(ctx context.Context) {
	s.poolWG.Add(1)
	go func() {
		defer s.poolWG.Done()
		s.recoverTwoPhase(ctx)
	}()
}

// recoverTwoPhase finishes, every TwoPhaseRecoveryInterval until ctx ends,
// the prepared parts of writes spanning shards that a sidecar left behind,
// and deletes decision rows no part needs any more.
func (s *Server) recoverTwoPhase(ctx context.Context) {
	t := time.NewTicker(s.cfg.Routing.TwoPhaseRecoveryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.recoveryRound(ctx)
	}
}

// preparedPart is one shard's prepared part of a write.
type preparedPart struct {
	shard string
	age   time.Duration
}

// maxForgotten bounds the decision rows one round may delete per shard.
const maxForgotten = 10000

// recoveryRound scans every shard primary for parts the sidecar prepared
// and resolves those prepared for at least half of TwoPhaseTimeout (a
// younger one is most likely being finished by its own sidecar). Decision rows that were visible before the scan began
// and name no part it found are deleted, when every shard was scanned: a
// write's parts are all prepared before its row becomes visible, so any
// part still prepared shows in the scan.
func (s *Server) recoveryRound(ctx context.Context) {
	m := s.router.Map()
	if len(m.Shards) < 2 {
		return
	}
	rows := map[string][]string{} // shard → decision rows seen before the scan
	complete := true
	for _, sh := range m.Shards {
		err := s.onPrimary(ctx, sh.Name, func(c health.Conn) error {
			return c.Exec("SELECT gid FROM brownie_sidecar.commit_log ORDER BY committed_at LIMIT "+strconv.Itoa(maxForgotten), func(r [][]byte) {
				rows[sh.Name] = append(rows[sh.Name], string(r[0]))
			})
		})
		if err != nil {
			complete = false
			s.log.Debug("two-phase recovery: cannot read decision rows", zap.String("shard", sh.Name), zap.Error(err))
		}
	}
	parts := map[string][]preparedPart{}
	for _, sh := range m.Shards {
		err := s.onPrimary(ctx, sh.Name, func(c health.Conn) error {
			return c.Exec("SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'brownie:%'", func(r [][]byte) {
				secs, _ := strconv.ParseFloat(string(r[1]), 64)
				parts[string(r[0])] = append(parts[string(r[0])], preparedPart{sh.Name, time.Duration(secs * float64(time.Second))})
			})
		})
		if err != nil {
			complete = false
			s.log.Warn("two-phase recovery: cannot scan shard", zap.String("shard", sh.Name), zap.Error(err))
		}
	}
	for gid, ps := range parts {
		if oldest(ps) < s.cfg.Routing.TwoPhaseTimeout/2 {
			continue // its sidecar is most likely finishing it right now
		}
		if err := s.resolve(ctx, gid, ps); err != nil {
			s.log.Warn("two-phase recovery: cannot resolve transaction yet", zap.String("gid", gid), zap.Error(err))
		}
	}
	if !complete {
		return
	}
	for shard, gids := range rows {
		var done []string
		for _, gid := range gids {
			if _, prepared := parts[gid]; !prepared {
				done = append(done, quoteLiteral(gid))
			}
		}
		if len(done) == 0 {
			continue
		}
		err := s.onPrimary(ctx, shard, func(c health.Conn) error {
			return c.Exec("DELETE FROM brownie_sidecar.commit_log WHERE gid IN ("+strings.Join(done, ",")+")", nil)
		})
		if err != nil {
			s.log.Warn("two-phase recovery: cannot delete decision rows", zap.String("shard", shard), zap.Error(err))
		}
	}
}

// oldest returns the age of the oldest of a write's prepared parts.
func oldest(ps []preparedPart) time.Duration {
	var age time.Duration
	for _, p := range ps {
		age = max(age, p.age)
	}
	return age
}

// resolve finishes one write's prepared parts from its anchor's state,
// asked afresh: prepared first (undecided), then whether its decision row
// is visible (committed) or not (rolled back). An anchor prepared for
// TwoPhaseTimeout is rolled back, which decides.
func (s *Server) resolve(ctx context.Context, gid string, parts []preparedPart) error {
	anchor, ok := gidAnchor(gid)
	if !ok {
		return errors.New("malformed transaction identifier")
	}
	g := quoteLiteral(gid)
	anchorAge := time.Duration(-1)
	committed := false
	err := s.onPrimary(ctx, anchor, func(c health.Conn) error {
		err := c.Exec("SELECT extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts WHERE gid = "+g, func(r [][]byte) {
			secs, _ := strconv.ParseFloat(string(r[0]), 64)
			anchorAge = time.Duration(secs * float64(time.Second))
		})
		if err != nil || anchorAge >= 0 {
			return err
		}
		return c.Exec("SELECT 1 FROM brownie_sidecar.commit_log WHERE gid = "+g, func([][]byte) { committed = true })
	})
	if err != nil {
		return fmt.Errorf("asking anchor shard %s: %w", anchor, err)
	}
	action, q := "rolled_back", "ROLLBACK PREPARED "+g
	switch {
	case committed:
		action, q = "committed", "COMMIT PREPARED "+g
	case anchorAge >= s.cfg.Routing.TwoPhaseTimeout:
		// Presumed abandoned: rolling the anchor back is the decision. If
		// its coordinator committed first, this fails and the next round
		// sees the row.
		if err := s.finishPart(ctx, gid, anchor, action, q); err != nil {
			return err
		}
	case anchorAge >= 0:
		return nil // undecided: its coordinator may still be at work
	}
	var first error
	for _, p := range parts {
		if p.shard != anchor {
			first = cmp.Or(first, s.finishPart(ctx, gid, p.shard, action, q))
		}
	}
	return first
}

// finishPart commits or rolls back (q) a write's prepared part on shard.
// A part already finished (42704) is not an error.
func (s *Server) finishPart(ctx context.Context, gid, shard, action, q string) error {
	err := s.onPrimary(ctx, shard, func(c health.Conn) error { return c.Exec(q, nil) })
	if pgerr.From(err).Code == pgerr.UndefinedObject {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shard %s: %w", shard, err)
	}
	s.metrics.TwoPhaseRecovered.WithLabelValues(action).Inc()
	s.log.Warn("two-phase recovery finished a prepared part left behind", zap.String("gid", gid), zap.String("shard", shard), zap.String("action", action))
	return nil
}

// onPrimary runs fn on the sidecar's own connection to shard's current
// primary (see health.Checker.OnHost).
func (s *Server) onPrimary(ctx context.Context, shard string, fn func(health.Conn) error) error {
	t, ok := s.primaryTarget(shard)
	if !ok {
		return fmt.Errorf("shard %s is not in the shard map", shard)
	}
	return s.health.OnHost(ctx, t, fn)
}
