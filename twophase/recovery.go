package twophase

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

// Config is what the recovery needs from the sidecar configuration.
type Config struct {
	// Timeout is how long an anchor part may stay prepared before the
	// recovery presumes its coordinator gone and rolls the write back
	// (TWO_PHASE_TIMEOUT); parts are left alone until the oldest of a
	// write's parts has been prepared for half of it.
	Timeout time.Duration
	// Interval is the period of the recovery's rounds
	// (TWO_PHASE_RECOVERY_INTERVAL).
	Interval time.Duration
}

// Deps are the recovery's collaborators.
type Deps struct {
	// Router supplies the current shard map; each round scans the shards
	// of the map current when it starts, and does nothing with fewer than
	// two.
	Router *router.Router
	// OnPrimary runs fn on a connection to shard's current primary that
	// is idle and outside the pools, bounded by ctx (package proxy passes
	// its health checker's, see health.Checker.OnHost). It returns fn's
	// error, or why no connection could be had.
	OnPrimary func(ctx context.Context, shard string, fn func(health.Conn) error) error
	// Metrics receives TwoPhaseRecovered, by action.
	Metrics *metrics.Metrics
	Log     *zap.Logger
}

// Recovery finishes the prepared parts of writes spanning shards that a
// sidecar left behind, from what each one's anchor says, and deletes the
// decision rows no part needs any more. Every sidecar runs one; several
// may run at once against the same shards. Create it with New and call Run
// once.
type Recovery struct {
	cfg       Config
	router    *router.Router
	onPrimary func(ctx context.Context, shard string, fn func(health.Conn) error) error
	metrics   *metrics.Metrics
	log       *zap.Logger
}

// New returns a recovery over deps. It opens no connections and starts no
// goroutines: call Run.
func New(cfg Config, deps Deps) *Recovery {
	return &Recovery{cfg: cfg, router: deps.Router, onPrimary: deps.OnPrimary, metrics: deps.Metrics, log: deps.Log}
}

// Run runs a recovery round every Interval (the first one Interval after
// the start) until ctx ends, and returns then. A round's failures are
// logged and retried at the next round, so Run has no error to return.
// Call it once.
func (r *Recovery) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.round(ctx)
	}
}

// preparedPart is one shard's prepared part of a write.
type preparedPart struct {
	shard string
	age   time.Duration
}

// maxForgotten bounds the decision rows one round may delete per shard.
const maxForgotten = 10000

// round scans every shard primary for parts the sidecar prepared and
// resolves those prepared for at least half of Timeout (a younger one is
// most likely being finished by its own sidecar). Decision rows that were
// visible before the scan began and name no part it found are deleted,
// when every shard was scanned: a write's parts are all prepared before
// its row becomes visible, so any part still prepared shows in the scan.
func (r *Recovery) round(ctx context.Context) {
	m := r.router.Map()
	if len(m.Shards) < 2 {
		return
	}
	rows := map[string][]string{} // shard → decision rows seen before the scan
	complete := true
	for _, sh := range m.Shards {
		err := r.onPrimary(ctx, sh.Name, func(c health.Conn) error {
			return c.Exec("SELECT gid FROM brownie_sidecar.commit_log ORDER BY committed_at LIMIT "+strconv.Itoa(maxForgotten), func(row [][]byte) {
				rows[sh.Name] = append(rows[sh.Name], string(row[0]))
			})
		})
		if err != nil {
			complete = false
			r.log.Debug("two-phase recovery: cannot read decision rows", zap.String("shard", sh.Name), zap.Error(err))
		}
	}
	parts := map[string][]preparedPart{}
	for _, sh := range m.Shards {
		err := r.onPrimary(ctx, sh.Name, func(c health.Conn) error {
			return c.Exec("SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'brownie:%'", func(row [][]byte) {
				secs, _ := strconv.ParseFloat(string(row[1]), 64)
				parts[string(row[0])] = append(parts[string(row[0])], preparedPart{sh.Name, time.Duration(secs * float64(time.Second))})
			})
		})
		if err != nil {
			complete = false
			r.log.Warn("two-phase recovery: cannot scan shard", zap.String("shard", sh.Name), zap.Error(err))
		}
	}
	for gid, ps := range parts {
		if oldest(ps) < r.cfg.Timeout/2 {
			continue // its sidecar is most likely finishing it right now
		}
		if err := r.resolve(ctx, gid, ps); err != nil {
			r.log.Warn("two-phase recovery: cannot resolve transaction yet", zap.String("gid", gid), zap.Error(err))
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
		err := r.onPrimary(ctx, shard, func(c health.Conn) error {
			return c.Exec("DELETE FROM brownie_sidecar.commit_log WHERE gid IN ("+strings.Join(done, ",")+")", nil)
		})
		if err != nil {
			r.log.Warn("two-phase recovery: cannot delete decision rows", zap.String("shard", shard), zap.Error(err))
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
// Timeout is rolled back, which decides.
func (r *Recovery) resolve(ctx context.Context, gid string, parts []preparedPart) error {
	anchor, ok := Anchor(gid)
	if !ok {
		return errors.New("malformed transaction identifier")
	}
	g := quoteLiteral(gid)
	anchorAge := time.Duration(-1)
	committed := false
	err := r.onPrimary(ctx, anchor, func(c health.Conn) error {
		err := c.Exec("SELECT extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts WHERE gid = "+g, func(row [][]byte) {
			secs, _ := strconv.ParseFloat(string(row[0]), 64)
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
	action, q := "rolled_back", RollbackPrepared(gid)
	switch {
	case committed:
		action, q = "committed", CommitPrepared(gid)
	case anchorAge >= r.cfg.Timeout:
		// Presumed abandoned: rolling the anchor back is the decision, but
		// only if this rollback is what finished it. When its coordinator
		// committed first (42704 here), the other parts are left for the
		// next round, which sees the decision row and commits them.
		err := r.onPrimary(ctx, anchor, func(c health.Conn) error { return c.Exec(q, nil) })
		if pgerr.From(err).Code == pgerr.UndefinedObject {
			return nil
		}
		if err != nil {
			return fmt.Errorf("shard %s: %w", anchor, err)
		}
		r.metrics.TwoPhaseRecovered.WithLabelValues(action).Inc()
		r.log.Warn("two-phase recovery finished a prepared part left behind", zap.String("gid", gid), zap.String("shard", anchor), zap.String("action", action))
	case anchorAge >= 0:
		return nil // undecided: its coordinator may still be at work
	}
	var first error
	for _, p := range parts {
		if p.shard != anchor {
			first = cmp.Or(first, r.finishPart(ctx, gid, p.shard, action, q))
		}
	}
	return first
}

// finishPart commits or rolls back (q) a write's prepared part on shard.
// A part already finished (42704) is not an error.
func (r *Recovery) finishPart(ctx context.Context, gid, shard, action, q string) error {
	err := r.onPrimary(ctx, shard, func(c health.Conn) error { return c.Exec(q, nil) })
	if pgerr.From(err).Code == pgerr.UndefinedObject {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shard %s: %w", shard, err)
	}
	r.metrics.TwoPhaseRecovered.WithLabelValues(action).Inc()
	r.log.Warn("two-phase recovery finished a prepared part left behind", zap.String("gid", gid), zap.String("shard", shard), zap.String("action", action))
	return nil
}
