package proxy

import (
	"bytes"
	"errors"
	"io"

	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// A read that a host was running when the host failed is run once more
// when nothing of its answer had reached the client: the client sees the
// answer, not the failure. Its statements are routed again, with a failed
// replica banned (so another replica or the primary serves them) or, for
// a failed primary, the health checks asked to look now (a read that must
// run on the primary then waits for it, or for a promoted standby, as any
// statement needing it does: see acquirePrimary). Only a request that can
// be repeated unchanged qualifies: every statement a read (by the
// router's analysis), outside any transaction, on a session with no state
// on that backend, nothing sent by the client after it (no pipeline), and
// made of messages the session can replay (Bind, Describe, Execute, Sync,
// Flush, Query, and Parses the sidecar answered itself), each small.
//
// The session goroutine records the request's client messages as it reads
// them (record), arms the retry when it sends the request's last message
// (armRetryLocked) and, while armed, waits for the request to end before
// reading the client again (awaitRequest). The relay goroutine disarms at
// the request's ReadyForQuery; when the connection fails first, before it
// forwarded anything, it detaches and destroys it (retryLost) and the
// session goroutine feeds the recorded messages through forwardMessage
// again, which routes them anew with the failed replica banned.

// Bounds on what is recorded for a retry: a larger request is not retried.
const (
	retryMaxMessage = 2 << 10
	retryMaxRequest = 16 << 10
)

// readRetry is the session's record of its current request for a retry.
type readRetry struct {
	// Session goroutine only: rec holds the request's client messages as
	// read; ok says the request so far may be replayed; parse is set from
	// reading a Parse until forwardMessage answers it itself.
	rec   []byte
	ok    bool
	parse bool
	// armed: armRetryLocked armed the current request, so endRequest must
	// wait for its end (the mutex is not taken for the others).
	armed bool
	// Under mu: on is the attachment running the armed request; lost says
	// it failed before answering (the session goroutine replays the
	// request), cause why and failed where.
	on     *pool.Conn[*upstream]
	cause  error
	failed router.Target
	lost   bool
	// silent: the connection died without a word from the server (no
	// FATAL or shutdown WARNING): its host went away at once (killed,
	// unreachable), and its other connections are as dead, though their
	// sockets may not show it yet.
	silent bool
	// warned: a shutdown WARNING (class 57) arrived for the armed request
	// and was not relayed (see noteShutdownWarning).
	warned bool
	// Session goroutine only: ends counts the statements of the request
	// whose answers end in a command tag (its Executes, or 1 for a Query
	// of one statement); unended says the request may have more (a Query
	// of several statements, a Flush that lets answers out before it
	// is armed), so its end cannot be known without ReadyForQuery.
	ends    int32
	unended bool
}

// restart empties the record for the next request, which may be replayed
// when ok. Session goroutine only.
func (r *readRetry) restart(ok bool) {
	r.rec, r.ok, r.parse, r.ends, r.unended = r.rec[:0], ok, false, 0, false
}

// record adds the client message just read (its header read, its body
// not yet) to the current request's record, or marks the request as not
// replayable. Session goroutine only.
func (ss *session) record(typ byte, n int) {
	r := &ss.retry
	if !r.ok {
		return
	}
	switch typ {
	case 'P':
		r.parse = true // replayable only when the sidecar answers it (parsedLocally)
		return
	case 'B', 'D', 'S', 'E', 'Q':
	case 'H':
		r.unended = true
	default:
		r.ok = false
		return
	}
	if n > retryMaxMessage || len(r.rec)+n+5 > retryMaxRequest {
		r.ok = false
		return
	}
	body, err := ss.cr.Peek(n)
	if err != nil || len(body) != n {
		r.ok = false
		return
	}
	switch typ {
	case 'E':
		r.ends++
	case 'Q':
		r.ends++
		r.unended = r.unended || !oneStatement(body)
	}
	r.rec = append(wire.AppendHeader(r.rec, typ, n), body...)
}

// parsedLocally notes that the sidecar answered the Parse being forwarded
// itself (ParseComplete, the statement defined for the session): a replay
// of the request finds it defined and must not see it again. Session
// goroutine only.
func (ss *session) parsedLocally() { ss.retry.parse = false }

// armRetryLocked arms the retry of the request whose last message (Sync
// or Query) is being sent on the session's upstream, when it qualifies.
// Called with ss.mu held, before the message is written.
func (ss *session) armRetryLocked(typ byte) {
	r := &ss.retry
	if (typ != 'S' && typ != 'Q') || !r.ok || r.parse || ss.up == nil || ss.pending != 1 || ss.txStatus != 'I' ||
		len(ss.deferred) > 0 || ss.backendStateLocked() || ss.draining || ss.ended ||
		ss.cancelHold > 0 || ss.cr.Buffered() > 0 {
		return
	}
	r.on, r.warned, r.armed = ss.up, false, true
	ss.retryAnswered.Store(false)
	if r.unended || r.ends == 0 {
		ss.retryLeft.Store(unknownEnds)
	} else {
		ss.retryLeft.Store(r.ends)
	}
	ss.retryArmed.Store(true)
}

// unknownEnds in retryLeft: the request's answer is not known to be
// complete before its ReadyForQuery.
const unknownEnds = -1 << 20

// oneStatement reports whether a Query's text (with its terminating zero
// byte) holds at most one statement: no semicolon before its end. A
// semicolon inside a literal or a comment makes it answer false, which
// only costs that Query the early end of finishLostLocked.
func oneStatement(q []byte) bool {
	q = bytes.TrimRight(q, "\x00 \t\r\n;")
	return bytes.IndexByte(q, ';') < 0
}

// noteAnswerEnd counts, for an armed request, one message of its answer
// that ends a statement's answer: a command tag or EmptyQueryResponse
// (typ 'C' or 'I'), or an error ('E'), after which the request's end is
// no longer known before its ReadyForQuery. Relay goroutine.
func (ss *session) noteAnswerEnd(typ byte) {
	switch typ {
	case 'C', 'I':
		ss.retryLeft.Add(-1)
	case 'E':
		ss.retryLeft.Store(unknownEnds)
	}
}

// answerComplete reports whether the armed request's whole answer, but
// its ReadyForQuery, has reached the client: every statement's answer
// ended in a command tag, none in an error. Relay goroutine.
func (ss *session) answerComplete() bool {
	return ss.retryArmed.Load() && ss.retryAnswered.Load() && ss.retryLeft.Load() == 0
}

// disarmLocked ends the retry of the request that just ended on c.
// Called by the relay goroutine with ss.mu held.
func (ss *session) disarmLocked(c *pool.Conn[*upstream]) {
	if ss.retry.on == c {
		ss.retry.on = nil
		ss.retryArmed.Store(false)
	}
}

// holdAck keeps back an acknowledgement of the armed request (ParseComplete,
// BindComplete, CloseComplete, ParameterDescription, RowDescription,
// NoData): the same request run again elsewhere answers the same, so until
// the first message that is an answer (a row, a command tag, an error) it
// may still be retried. It reports whether the message was held. Relay
// goroutine.
func (ss *session) holdAck(typ byte, n int, body []byte, stream bool) bool {
	switch typ {
	case '1', '2', '3', 't', 'T', 'n':
	default:
		return false
	}
	if stream || len(ss.acks)+n > retryMaxRequest {
		return false
	}
	ss.acks = append(wire.AppendHeader(ss.acks, typ, n), body...)
	return true
}

// releaseAcks writes the acknowledgements held back (holdAck) to the
// client, unflushed: what follows flushes. Relay goroutine.
func (ss *session) releaseAcks() error {
	if len(ss.acks) == 0 {
		return nil
	}
	w := &ss.cw
	w.mu.Lock()
	_, err := w.w.Write(ss.acks)
	w.mu.Unlock()
	ss.acks = ss.acks[:0]
	return err
}

// retryPending reports whether a failure of the attachment now would be
// retried: a request is armed and nothing of its answer was forwarded.
// Relay goroutine.
func (ss *session) retryPending() bool {
	return ss.retryArmed.Load() && !ss.retryAnswered.Load()
}

// noteShutdownWarning records that the server announced its shutdown to
// the armed request's connection (a WARNING of class 57, not relayed): its
// loss that follows is not a silent one. Relay goroutine.
func (ss *session) noteShutdownWarning() {
	ss.mu.Lock()
	ss.retry.warned = true
	ss.mu.Unlock()
}

// holdRetryFatal keeps back a FATAL error the server sent while running
// an armed request before anything of its answer: the loss that follows
// decides whether the client hears it (retryLost, or reportLost when the
// session ends). It reports whether the error was held. Relay goroutine.
func (ss *session) holdRetryFatal(body []byte) bool {
	if !ss.retryPending() {
		return false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.idleFatal = append(ss.idleFatal[:0], body...)
	return true
}

// retryLost handles the failure of c, the attachment running an armed
// request, before anything of its answer was forwarded: c is detached and
// destroyed, and the session goroutine replays the request. It reports
// false, doing nothing, when the request does not qualify (any more).
// Relay goroutine, with ss.mu held; it releases ss.mu when it returns
// true.
func (ss *session) retryLostLocked(c *pool.Conn[*upstream], err error) bool {
	r := &ss.retry
	if r.on != c || ss.retryAnswered.Load() || ss.backendStateLocked() || ss.draining || ss.ended || ss.cancelHold > 0 {
		return false
	}
	r.on, r.lost, r.cause, r.failed, r.silent = nil, true, err, c.Value.target, ss.idleFatal == nil && !r.warned
	ss.retryArmed.Store(false)
	ss.detachLostLocked(c, err, "retried", "upstream connection lost while it ran a read; the read runs again")
	return true
}

// finishLostLocked handles the failure of c, the attachment running an
// armed request, after the request's whole answer reached the client and
// before its ReadyForQuery: a server stopped at once (pg_ctl stop -m
// immediate) flushes what it had written, the last command tag
// included, with its shutdown WARNING, and exits. Every statement of
// the read completed, outside any transaction, so the client gets the
// ReadyForQuery (idle) that the server would have sent, and c is
// detached and destroyed as when the session is idle on it (its next
// request takes a new connection). It reports false, doing nothing,
// when the request's end is not known (see answerComplete) or the
// session has anything more riding on c. Relay goroutine, with ss.mu
// held; it releases ss.mu when it returns true.
func (ss *session) finishLostLocked(c *pool.Conn[*upstream], err error) bool {
	if ss.retry.on != c || !ss.answerComplete() || ss.pending != 1 || ss.txStatus != 'I' ||
		ss.backendStateLocked() || ss.draining || ss.ended || ss.resetting || ss.internal ||
		ss.cancelHold > 0 || ss.copyIn || ss.fanning || ss.crossing || len(ss.deferred) > 0 ||
		ss.dirty.any() || ss.preRead.Load() || ss.injected.Load() > 0 || ss.idleFatal != nil || ss.fatalSeen.Load() {
		return false
	}
	ss.dropExpectLocked(len(ss.expect))
	ss.pending = 0
	ss.disarmLocked(c)
	held := ss.detachLocked(c)
	// The client writer is taken before the session lock is released, so
	// the ReadyForQuery reaches the client before anything its next
	// request's connection relays (as in readyForQuery).
	ss.cw.mu.Lock()
	ss.mu.Unlock()
	if !ss.discard.Load() {
		ss.cw.relayed += len(ss.cw.rfq)
		if err := ss.cw.writeReadyLocked('I', true); err != nil {
			ss.discard.Store(true)
		}
	}
	ss.cw.mu.Unlock()
	ss.destroyLost(c, err, "finished", "upstream connection lost after a read's whole answer; the session goes on with a new one", held)
	return true
}

// endRequest follows the client's last message of a request (Sync or
// Query), sent or failed to send. When the request is armed for a retry,
// it waits for it to end and, when its host failed before answering, bans
// the host (a replica) or asks for a round of health checks (a primary)
// and replays the request once (that run is not armed again); replayed
// reports that. Then the record starts afresh. Session goroutine only.
func (ss *session) endRequest() (replayed bool, err error) {
	r := &ss.retry
	if !r.armed {
		// Most requests: nothing to wait for. Without routing nothing is
		// ever recorded (record returns at once).
		r.restart(ss.srv.routingEnabled())
		return false, nil
	}
	r.armed = false
	ss.mu.Lock()
	for r.on != nil && !r.lost && !ss.ended {
		ss.waitLocked()
	}
	lost, cause, failed, silent := r.lost, r.cause, r.failed, r.silent
	r.on, r.lost, r.cause = nil, false, nil
	ss.mu.Unlock()
	if lost {
		if failed.Role == router.Replica {
			ss.srv.health.Ban(failed.Host.Addr, cause)
		} else {
			if silent {
				// Its idle pooled connections would pass the liveness
				// check for the few milliseconds the kernel takes to close
				// them: the read must not run again on one.
				ss.srv.hostDown(failed.Host.Addr)
			}
			ss.srv.health.Recheck()
		}
		err = ss.replay()
	}
	r.restart(true)
	if cap(r.rec) > retryMaxRequest {
		r.rec = nil
	}
	return lost, err
}

// replay runs the recorded request again, message by message, as if the
// client sent it now. Session goroutine only.
func (ss *session) replay() error {
	ss.retry.ok = false // once
	client := ss.cr
	ss.cr = wire.NewReader(bytes.NewReader(ss.retry.rec), max(len(ss.retry.rec), 16))
	defer func() { ss.cr = client }()
	for {
		typ, n, err := ss.cr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ss.forwardMessage(typ, n); err != nil {
			return err
		}
	}
}
