package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"slices"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/pool"
)

// Cancel outcomes, the result label of brownie_sidecar_cancel_requests_total.
const (
	cancelForwarded = "forwarded" // delivered while the client's request ran on the backend
	cancelQueued    = "queued"    // the request still waited for a connection: cancelled there
	cancelTooLate   = "too_late"  // the request ended before the cancel could be delivered
	cancelIdle      = "idle"      // nothing of the client's was running
	cancelUnknown   = "unknown"   // no session has that backend key
	cancelFailed    = "failed"    // the upstream could not be reached
)

// errQueuedCancel is the cause given to a pool wait cancelled by the
// client's CancelRequest.
var errQueuedCancel = errors.New("cancelled while waiting for an upstream connection")

// errCanceled is what a client whose request was cancelled before it
// reached a server gets, as Postgres words it.
func errCanceled() *pgerr.Error {
	return pgerr.Errorf(pgerr.QueryCanceled, "canceling statement due to user request")
}

// cancelTarget is what a CancelRequest was sent for: the session's
// attachment (or fan-out legs) running its request when the cancel
// arrived.
type cancelTarget struct {
	attached *pool.Conn[*upstream]
	fan      []*upstream
}

// cancel handles a CancelRequest. It looks the session up by the
// sidecar's backend key and cancels only the request the client is
// running:
//   - a request still waiting for an upstream connection is cancelled
//     there and never sent (the client gets 57014);
//   - a request running upstream is cancelled by a CancelRequest to its
//     backend, delivered only while that request still runs there: the
//     session holds the backend (no release to the pool, no next request)
//     from the moment the cancel arrives until it is delivered or dropped,
//     so a cancel never reaches a statement of another client;
//   - otherwise it is dropped, as Postgres ignores a cancel for an idle
//     backend.
//
// Unknown keys are ignored, as Postgres does. It returns once the cancel
// is delivered or dropped, so the client's cancel connection closes then,
// as Postgres's does.
func (s *Server) cancel(pid uint32, secret []byte) {
	s.mu.Lock()
	ss := s.sessions[pid]
	s.mu.Unlock()
	if ss == nil || subtle.ConstantTimeCompare(ss.secret, secret) != 1 {
		s.metrics.CancelRequests.WithLabelValues(cancelUnknown).Inc()
		return
	}
	s.metrics.CancelRequests.WithLabelValues(ss.cancelRequest()).Inc()
}

// cancelRequest cancels what the session runs and returns the outcome.
func (ss *session) cancelRequest() string {
	s := ss.srv
	ss.mu.Lock()
	if ss.acquireCancel != nil { // waiting for a connection: cancel the wait
		ss.acquireCancel(errQueuedCancel)
		ss.acquireCancel = nil
		ss.mu.Unlock()
		return cancelQueued
	}
	tgt, ok := ss.runningLocked()
	if !ok {
		ss.mu.Unlock()
		return cancelIdle
	}
	ss.cancelHold++
	ss.mu.Unlock()
	s.metrics.CancelsInFlight.Inc()
	defer func() {
		s.metrics.CancelsInFlight.Dec()
		ss.mu.Lock()
		ss.cancelHold--
		ss.cond.Broadcast()
		ss.mu.Unlock()
	}()

	ctx, stop := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
	defer stop()
	ups := tgt.fan
	if tgt.attached != nil {
		ups = append(slices.Clone(ups), tgt.attached.Value)
	}
	outcome := cancelTooLate
	for _, u := range ups {
		conn, err := s.dialer.cancelConn(ctx, u.target)
		if err != nil {
			ss.log.Warn("cancel forward failed", zap.String("shard", u.target.Shard), zap.Error(err))
			return cancelFailed
		}
		// The connection took time to open: deliver only if the request
		// still runs there. It cannot have moved to another client: the
		// backend is held until this cancel is done.
		ss.mu.Lock()
		still := ss.stillRunningLocked(tgt, u)
		ss.mu.Unlock()
		if still {
			if err := sendCancel(conn, u.pid, u.secret); err == nil {
				outcome = cancelForwarded
			}
		}
		conn.Close()
	}
	return outcome
}

// runningLocked returns what the session runs upstream now, if anything.
// Called with ss.mu held.
func (ss *session) runningLocked() (cancelTarget, bool) {
	var t cancelTarget
	t.fan = slices.Clone(ss.fanUps)
	if ss.up != nil && (ss.pending > 0 || !ss.synced) && !ss.resetting && !ss.upGone {
		t.attached = ss.up // a request in flight, or one not ended yet (Flush, no Sync)
	}
	return t, t.attached != nil || len(t.fan) > 0
}

// stillRunningLocked reports whether the request t targeted still runs on
// u. Called with ss.mu held.
func (ss *session) stillRunningLocked(t cancelTarget, u *upstream) bool {
	if t.attached != nil && t.attached.Value == u {
		return ss.up == t.attached && (ss.pending > 0 || !ss.synced) && !ss.resetting && !ss.upGone
	}
	return ss.fanning && slices.Contains(ss.fanUps, u)
}

// waitCancelsLocked waits until no cancel of the session is being
// delivered, before its backend may serve anything else. Called with
// ss.mu held.
func (ss *session) waitCancelsLocked() {
	for ss.cancelHold > 0 {
		ss.cond.Wait()
	}
}
