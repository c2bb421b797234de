package proxy

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/router"
)

// relay runs the attached session: this goroutine forwards client messages
// upstream while upstreamToClient forwards replies. When the client goes
// away the upstream is reset and released if it is at a safe point, and
// destroyed otherwise.
func (ss *session) relay() {
	u := ss.up.Value
	go ss.upstreamToClient()
	err := ss.clientToUpstream(u)
	ss.finish(err)
}

// clientToUpstream forwards client messages until the client terminates,
// fails, or the session is ended.
func (ss *session) clientToUpstream(u *upstream) error {
	m := ss.srv.metrics
	for {
		typ, n, err := ss.cr.Next()
		if err != nil {
			return err
		}
		if typ == 'X' {
			return nil
		}
		ss.mu.Lock()
		if ss.ended {
			ss.mu.Unlock()
			return errSessionEnded
		}
		switch typ {
		case 'Q', 'F':
			ss.pending++
			ss.synced = true
		case 'S':
			if !ss.copyIn { // Sync inside COPY IN gets no ReadyForQuery
				ss.pending++
			}
			ss.synced = true
		case 'c', 'f':
			ss.copyIn = false
			ss.synced = true
		case 'H':
			// Flush changes nothing.
		default:
			ss.synced = false
		}
		ss.mu.Unlock()

		hdr := wire.AppendHeader(make([]byte, 0, 5), typ, n)
		if _, err := u.w.Write(hdr); err != nil {
			return ss.upstreamWriteFailed(err)
		}
		if n > largeMessage {
			err = ss.cr.CopyBody(u.w)
		} else {
			var body []byte
			if body, err = ss.cr.Body(); err == nil {
				_, err = u.w.Write(body)
			}
		}
		if err != nil {
			return ss.upstreamWriteFailed(err)
		}
		m.ToUpstream.Add(float64(n + 5))
		if ss.cr.Buffered() == 0 {
			if err := u.w.Flush(); err != nil {
				return ss.upstreamWriteFailed(err)
			}
		}
	}
}

var errSessionEnded = errors.New("session ended")

// errUpstreamWrite marks a failure writing to the upstream; the relay
// goroutine reports the lost connection to the client.
var errUpstreamWrite = errors.New("upstream write failed")

func (ss *session) upstreamWriteFailed(err error) error {
	ss.log.Warn("upstream write failed", zap.Error(err))
	_ = ss.up.Value.conn.Close()
	return errUpstreamWrite
}

// upstreamToClient forwards upstream messages to the client. It owns the
// upstream reader. It returns when the upstream fails or, once the client
// has gone, when the reset has completed (recording resetDone). It never
// releases the pool connection itself: the session goroutine does, after
// its own writes have returned, so the connection is never handed to
// another session while this one still touches it.
func (ss *session) upstreamToClient() {
	u := ss.up.Value
	m := ss.srv.metrics
	defer close(ss.relayDone)
	for {
		typ, n, err := u.r.Next()
		if err != nil {
			ss.upstreamLost(err)
			return
		}
		var body []byte
		stream := n > largeMessage && typ != 'E' && typ != 'Z' && typ != 'S'
		if !stream {
			if body, err = u.r.Body(); err != nil {
				ss.upstreamLost(err)
				return
			}
		}
		release, terminate := false, false
		switch typ {
		case 'Z':
			ss.mu.Lock()
			if len(body) == 1 {
				ss.txStatus = body[0]
				u.txStatus = body[0]
			}
			if ss.pending > 0 {
				ss.pending--
			}
			idle := ss.pending == 0 && ss.synced && !ss.copyIn && ss.txStatus == 'I'
			release = ss.resetting && idle
			terminate = ss.draining && idle && !ss.resetting
			if release {
				ss.resetDone = !ss.resetFailed
				ss.mu.Unlock()
				if !ss.resetDone {
					ss.log.Warn("upstream reset failed; destroying connection")
				}
				return
			}
			ss.mu.Unlock()
		case 'S':
			u.setParam(body)
		case 'E':
			m.Errors.WithLabelValues("upstream", errorClass(body)).Inc()
			ss.mu.Lock()
			if ss.resetting {
				ss.resetFailed = true
			}
			ss.mu.Unlock()
		case 'G':
			ss.mu.Lock()
			ss.copyIn = true
			ss.mu.Unlock()
		}
		if !ss.discard.Load() {
			if err := ss.forward(typ, n, body, u, stream); err != nil {
				ss.discard.Store(true) // client gone; keep reading so the reset can finish
				if stream {            // the upstream reader stopped mid-message
					ss.upstreamLost(err)
					return
				}
			}
		} else if stream {
			if err := u.r.CopyBody(discardWriter{}); err != nil {
				ss.upstreamLost(err)
				return
			}
		}
		if terminate {
			ss.terminate(errShutdown)
		}
	}
}

// forward writes one upstream message to the client, flushing when no
// more upstream data is buffered.
func (ss *session) forward(typ byte, n int, body []byte, u *upstream, stream bool) error {
	w := &ss.cw
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(wire.AppendHeader(make([]byte, 0, 5), typ, n)); err != nil {
		return err
	}
	var err error
	if stream {
		err = u.r.CopyBody(w.w)
	} else {
		_, err = w.w.Write(body)
	}
	if err != nil {
		return err
	}
	ss.srv.metrics.ToClient.Add(float64(n + 5))
	if u.r.Buffered() == 0 {
		return w.w.Flush()
	}
	return nil
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// upstreamLost handles an upstream read failure. If the session did not
// cause it (by closing the upstream after the client left), the client gets
// FATAL 08006 and its connection is closed.
func (ss *session) upstreamLost(err error) {
	ss.mu.Lock()
	expected := ss.resetting || ss.ended
	ss.ended = true
	ss.upGone = true
	ss.mu.Unlock()
	if expected {
		return
	}
	t := ss.up.Value.target
	ss.log.Warn("upstream connection lost", zap.String("shard", t.Shard), zap.Uint32("backend_pid", ss.up.Value.pid), zap.Error(err))
	e := pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream %s lost", t)
	e.Detail = err.Error()
	ss.srv.metrics.Errors.WithLabelValues("sidecar", e.Code.Class()).Inc()
	if !ss.discard.Load() {
		_ = ss.cw.sendError(e)
	}
	_ = ss.client.Close()
}

// finish runs when the client side has ended. It is the only place that
// gives the pool connection back: after a clean reset (ROLLBACK if needed,
// then the reset query) it is released; in any doubt it is destroyed.
func (ss *session) finish(cause error) {
	ss.discard.Store(true)
	c := ss.up
	u := c.Value
	ss.mu.Lock()
	lost := ss.upGone
	safe := ss.pending == 0 && ss.synced && !ss.copyIn && !lost && !errors.Is(cause, errUpstreamWrite)
	running := ss.pending > 0
	var reset []string
	if safe {
		if ss.txStatus != 'I' {
			reset = append(reset, "ROLLBACK")
		}
		if q := ss.srv.cfg.Pool.ResetQuery; q != "" {
			reset = append(reset, q)
		}
		if len(reset) == 0 {
			reset = append(reset, "SELECT 1") // still round-trip so the relay stops at ReadyForQuery
		}
		ss.resetting = true
		ss.pending += len(reset)
		ss.synced = true
	}
	ss.ended = true
	ss.mu.Unlock()
	_ = ss.client.Close()

	if safe {
		if err := u.sendQueries(reset); err == nil {
			select {
			case <-ss.relayDone:
			case <-time.After(ss.srv.cfg.Pool.ResetTimeout):
				ss.log.Warn("upstream reset timed out; destroying connection")
			}
		}
	} else {
		ss.log.Debug("destroying upstream not at a safe point", zap.Bool("query_running", running), zap.Error(cause))
		if running && !lost {
			ss.cancelBackend(u)
		}
	}
	select {
	case <-ss.relayDone:
	default:
		_ = u.conn.Close()
		<-ss.relayDone
	}
	ss.mu.Lock()
	clean := ss.resetDone
	ss.mu.Unlock()
	if clean {
		c.Release()
		ss.log.Debug("session ended", zap.Error(cause))
		return
	}
	c.Destroy()
}

// cancelBackend asks the upstream to cancel what the departed client left
// running, so locks are not held until the query would have ended.
func (ss *session) cancelBackend(u *upstream) {
	ctx, cancel := context.WithTimeout(context.Background(), ss.srv.cfg.ConnectTimeout)
	defer cancel()
	if err := ss.srv.dialer.cancel(ctx, u.target, u.pid, u.secret); err != nil {
		ss.log.Debug("cancel on client exit failed", zap.Error(err))
	}
}

// sendQueries writes simple queries (used for reset) and flushes.
func (u *upstream) sendQueries(qs []string) error {
	_ = u.conn.SetWriteDeadline(time.Now().Add(time.Second))
	defer u.conn.SetWriteDeadline(time.Time{})
	for _, q := range qs {
		buf := wire.AppendHeader(nil, 'Q', len(q)+1)
		buf = append(append(buf, q...), 0)
		if _, err := u.w.Write(buf); err != nil {
			return err
		}
	}
	return u.w.Flush()
}

// runningBackend returns the upstream backend to cancel when a query is in
// flight.
func (ss *session) runningBackend() (t router.Target, pid uint32, secret []byte, ok bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.up == nil || ss.pending == 0 || ss.resetting || ss.upGone {
		return t, 0, nil, false
	}
	u := ss.up.Value
	return u.target, u.pid, u.secret, true
}

// drain marks the session for shutdown; an idle session is terminated at
// once, a busy one when it next becomes idle.
func (ss *session) drain() {
	ss.mu.Lock()
	ss.draining = true
	idle := ss.up != nil && ss.pending == 0 && ss.synced && !ss.copyIn && ss.txStatus == 'I' && !ss.resetting
	ss.mu.Unlock()
	if idle {
		ss.terminate(errShutdown)
	}
}

// terminate sends e to the client and closes the client connection; the
// session goroutine then cleans up the upstream. Idempotent.
func (ss *session) terminate(e *pgerr.Error) {
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		return
	}
	ss.ended = true
	ss.mu.Unlock()
	ss.srv.metrics.Errors.WithLabelValues("sidecar", e.Code.Class()).Inc()
	if !ss.discard.Load() {
		_ = ss.cw.sendError(e)
	}
	_ = ss.client.Close()
}

// errorClass extracts the SQLSTATE class from an ErrorResponse body without
// decoding the rest.
func errorClass(body []byte) string {
	for i := 0; i < len(body) && body[i] != 0; {
		field := body[i]
		j := i + 1
		for j < len(body) && body[j] != 0 {
			j++
		}
		if field == 'C' && j-i-1 >= 2 {
			return string(body[i+1 : i+3])
		}
		i = j + 1
	}
	return "unknown"
}

func errClass(err error) string {
	return pgerr.From(err).Code.Class()
}
