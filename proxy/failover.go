package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// acquirePrimary takes a connection to the primary of t's shard (t is its
// current target) with the client's settings applied. When no connection
// to it can be made, it waits for the health checks to report a primary
// again (the same host back, or a promoted standby) up to FAILOVER_WAIT,
// then proceeds there. It tries the connection first even while the checks
// report the primary down: a connection that works is better evidence than
// a check that may lag behind the host's return. After FAILOVER_WAIT it
// fails with 08006 naming the shard (errNoPrimary; ERROR severity: the
// statement did not run, and a session outside a transaction goes on). A
// CancelRequest from the client ends the wait with 57014, as it ends a
// wait in a pool. It waits holding neither ss.mu nor a pool slot, so
// neither other clients nor the client's own relay goroutine are held up.
// Called from the session goroutine.
func (ss *session) acquirePrimary(t router.Target) (*pool.Conn[*upstream], error) {
	s := ss.srv
	wait := s.cfg.Routing.FailoverWait
	if wait <= 0 {
		return ss.acquire(t, false)
	}
	var deadline time.Time
	var failed router.Host
	var cause error
	for {
		if cause != nil {
			if deadline.IsZero() {
				deadline = time.Now().Add(wait)
				ss.log.Debug("waiting for primary", zap.String("shard", t.Shard), zap.String("addr", t.Host.Addr), zap.Error(cause))
			}
			nt, err := ss.awaitPrimary(t.Shard, failed, deadline, cause)
			if err != nil {
				return nil, err
			}
			t = nt
		}
		c, err := ss.acquire(t, false)
		if err == nil || !primaryGone(err) {
			return c, err
		}
		// The checks have not seen it yet: have them look now, and wait
		// for a round started after this failure.
		s.health.Recheck()
		failed, cause = t.Host, err
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil, err
		}
	}
}

// errNoPrimary is in the chain of the error a statement gets when its
// shard found no primary within FAILOVER_WAIT.
var errNoPrimary = errors.New("no primary within FAILOVER_WAIT")

// awaitPrimary waits until deadline for the health checks to report a
// primary for shard (not failed, unless a round of checks after this
// call found it answering again) and returns its target, or the error
// the client gets: 08006 naming the shard and what is wrong with it
// (errNoPrimary in its chain), 57014 when the client cancelled the wait,
// or 57P01 when the sidecar is stopping. Session goroutine only.
func (ss *session) awaitPrimary(shard string, failed router.Host, deadline time.Time, cause error) (router.Target, error) {
	s := ss.srv
	dctx, dcancel := context.WithDeadline(s.poolCtx, deadline)
	defer dcancel()
	ctx, cancel := context.WithCancelCause(dctx)
	defer cancel(nil)
	ss.mu.Lock()
	if ss.queueable && !ss.ended {
		ss.acquireCancel = cancel // a CancelRequest ends the wait
	}
	ss.mu.Unlock()
	h, err := s.health.WaitPrimary(ctx, shard, failed)
	ss.mu.Lock()
	ss.acquireCancel = nil
	ss.mu.Unlock()
	if err == nil {
		return router.Target{Shard: shard, Role: router.Primary, Host: h}, nil
	}
	if errors.Is(context.Cause(ctx), errQueuedCancel) {
		return router.Target{}, errCanceled()
	}
	if s.poolCtx.Err() != nil {
		return router.Target{}, errDraining
	}
	e := pgerr.Errorf(pgerr.ConnectionFailure, "shard %s has no primary: none became available within FAILOVER_WAIT (%s)", shard, s.cfg.Routing.FailoverWait)
	e.Detail = err.Error()
	if cause != nil {
		e.Detail += "; last connection attempt: " + pgerr.From(cause).Message
	}
	e.Hint = "the statement did not run; retry once the shard's primary is back or a replica is promoted (GET /status on the admin port shows the shard)"
	e.Retryable = true
	return router.Target{}, e.WithCause(fmt.Errorf("%w: %w", errNoPrimary, err))
}

// primaryGone reports whether err, from taking a connection, says the
// server could not be reached or refuses connections for now (stopping,
// crashed, starting up), as opposed to a failure of the session's own
// (settings, certificate, pool wait).
func primaryGone(err error) bool {
	if errors.Is(err, errDraining) || errors.Is(err, errSessionEnded) {
		return false
	}
	var pe *pgerr.Error
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "57P01", "57P02", "57P03": // admin shutdown, crash shutdown, cannot connect now
		return true
	}
	return pe.Code.Class() == "08"
}

// hostDown drops the idle pooled connections to addr, whose server
// stopped answering its health checks: a statement must not be sent on
// one of them. Connections in use are left to their sessions. Called by
// the health checker.
func (s *Server) hostDown(addr string) {
	s.mu.Lock()
	var pools []*upstreamPool
	for k, p := range s.pools {
		if k.target.Host.Addr == addr {
			pools = append(pools, p)
		}
	}
	s.mu.Unlock()
	for _, p := range pools {
		p.Purge()
	}
}

// greetingCandidates lists where a session's greeting may come from, in
// order: first (the preferred target), the other hosts of its shard (its
// primary, then its standbys that answer their checks), then each other
// shard's the same way, in map order; primaries the checks report down
// come last. Any host will do: the greeting only reports server
// parameters, and the connection goes back at once.
func (ss *session) greetingCandidates(first router.Target) []router.Target {
	s := ss.srv
	out := []router.Target{first}
	var late []router.Target
	order := []string{first.Shard}
	for _, name := range s.router.Map().ShardNames() {
		if name != first.Shard {
			order = append(order, name)
		}
	}
	for _, name := range order {
		if pt, ok := s.primaryTarget(name); ok && pt != first {
			if s.health.PrimaryOK(name) {
				out = append(out, pt)
			} else {
				late = append(late, pt)
			}
		}
		for _, h := range s.health.Standbys(name) {
			if t := (router.Target{Shard: name, Role: router.Replica, Host: h}); t != first {
				out = append(out, t)
			}
		}
	}
	return append(out, late...)
}

// greetingFailed wraps the first failure of a greeting that found no host.
func greetingFailed(err error, tried int) error {
	if tried <= 1 {
		return err
	}
	e := pgerr.From(err)
	if e.Detail != "" {
		e.Detail += "; "
	}
	e.Detail += fmt.Sprintf("%d hosts tried, none reachable", tried)
	return e
}
