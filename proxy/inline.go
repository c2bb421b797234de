package proxy

import (
	"io"
	"time"

	"github.com/brownie/brownie-sidecar/internal/netx"
)

// The answer read inline.
//
// In transaction mode without a shard map most requests are one round
// trip: the client sends a request, waits for its whole answer, and the
// connection goes back to the pool at its ReadyForQuery. Handing that
// answer to the relay goroutine costs two goroutine switches per
// transaction; the session goroutine, which would otherwise only wait for
// the client's next message, reads it itself instead.
//
//   - An attachment's relay job is held (heldRelay) instead of going to the
//     relay goroutine, for as long as nothing has reached the upstream
//     socket: the server has nothing to answer, so nothing needs reading.
//   - The request's last message (Sync or Query) sent with no more client
//     input buffered, in one write of at most maxInlineWrite bytes (always
//     taken whole by the socket's buffers, so the write cannot wait for the
//     server), leaves the job for relayInline: the session goroutine
//     relays the answer up to the ReadyForQuery that ends it.
//   - Anything else first gives the job to the relay goroutine
//     (dispatchHeld): any other write upstream (a request sent in parts, a
//     Flush, a COPY), every wait of the session goroutine for the relay,
//     and the session's end. So the session goroutine never waits for an
//     answer with nothing reading it.
//   - When the session waited for its connection (clients queue for the
//     pool), that last write does not reach the socket at once: its bytes
//     are held (netx.Awaiter) and written from inside the wait for the
//     answer (awaitAnswer), so no read is tried before the answer can have
//     arrived, and the goroutine gives the thread up at once to the
//     sessions that hold or wait for connections. Anything that hands the
//     attachment to the relay goroutine first sends what is held. Without
//     queueing the answer is often there by the time a read is tried (the
//     server's process ran when the write woke it), and a read then costs
//     less than waiting through the poller: new connections ran 10 %
//     slower with every request held (docs/performance.md).
//   - relayInline hands the attachment on to the relay goroutine when its
//     answer leaves it attached (a transaction left open: the relay
//     watches the idle connection, as ever), when the server waits for
//     the client (COPY FROM STDIN), and when the answer takes longer than
//     CLIENT_IDLE_RELEASE: the idle sweep kicks the wait (kickUpstream) as
//     it kicks a wait for the client, and the session goroutine goes back
//     to its client, so a client that leaves while its statement runs is
//     seen, and its statement cancelled, as with the relay goroutine.
//
// A client that pipelines requests without reading the answers is served
// as Postgres serves it: while the session goroutine writes an answer the
// client does not read, it reads nothing from the client either.

// maxInlineWrite bounds the request write after which the answer may be
// read inline: a socket's send buffer takes it whole without the server
// reading (Linux's smallest default is 16 KB), so the write cannot wait
// for a server busy writing an answer nobody reads.
const maxInlineWrite = 8 << 10

// mayHoldRelay reports whether a new attachment's relay job may be held
// for an inline answer: transaction mode without a shard map.
func (ss *session) mayHoldRelay() bool {
	return ss.transactionMode() && !ss.srv.routingEnabled()
}

// dispatchHeld gives a held relay job to the relay goroutine, starting one
// when the session has none. Session goroutine only (ss.mu held or not:
// only the session goroutine touches relayJobs).
func (ss *session) dispatchHeld() {
	if ss.heldRelay.c == nil {
		return
	}
	if err := ss.upw.sendHeld(); err != nil {
		// Without ss.mu, which the caller may hold: the relay goroutine
		// reads the server's last words, if any, and reports the loss.
		ss.writeFailed(ss.heldRelay.c, err)
	}
	ss.runRelay(ss.takeHeldRelay())
}

// takeHeldRelay returns the held relay job, which the caller now serves or
// hands on. Session goroutine only.
func (ss *session) takeHeldRelay() relayJob {
	j := ss.heldRelay
	ss.heldRelay, ss.inlineNext = relayJob{}, false
	return j
}

// runRelay gives j to the relay goroutine, starting one when the session
// has none. The previous attachment's relay has already let go (it
// detached, or it failed and the session is ending), so the buffered send
// never waits for long. Session goroutine only.
func (ss *session) runRelay(j relayJob) {
	if j.done == nil {
		j.done = make(chan struct{})
		ss.relayDone = j.done
	}
	if ss.relayJobs == nil {
		ss.relayJobs = make(chan relayJob, 1)
		go ss.relayLoop(ss.relayJobs)
	}
	ss.relayJobs <- j
}

// waitLocked waits on ss.cond for the relay to change the session's state,
// first giving a held relay job to the relay goroutine: something must
// read the answers the session goroutine waits for. Session goroutine
// only, with ss.mu held.
func (ss *session) waitLocked() {
	ss.dispatchHeld()
	ss.cond.Wait()
}

// relayDoneLocked returns the channel closed when the relay lets go of the
// current attachment, first giving a held relay job to the relay
// goroutine. Session goroutine only, with ss.mu held.
func (ss *session) relayDoneLocked() chan struct{} {
	ss.dispatchHeld()
	return ss.relayDone
}

// relayInline relays the answer to the request just sent, on the session
// goroutine (see the top of this file). Session goroutine only; it runs
// only after a request's last write with the relay job held.
func (ss *session) relayInline() {
	j := ss.takeHeldRelay()
	if j.c.Value.r.Buffered() > 0 {
		// Something came before the answer (a notice, a parameter
		// change): no wait for the answer, so the request goes out now.
		if err := ss.upw.sendHeld(); err != nil {
			_ = ss.upstreamWriteFailed(err) // the next read reports the loss
		}
	}
	ss.relayAnswers(j.c, j.done, true, 0)
}

// awaitAnswer waits, before an inline read, until the upstream has sent
// something (wire.Reader.Wait consumes nothing, so the relay goroutine
// can take over in step). It reports false when the idle sweep ended the
// wait (kickUpstream): the answer has taken longer than the idle release,
// and the caller hands the attachment to the relay goroutine. Session
// goroutine only.
func (ss *session) awaitAnswer(u *upstream) bool {
	mark := ss.srv.idleEpoch.Load()
	ss.inlineConn = u.conn // read by kickUpstream after it sees mark
	ss.upWaitMark.Store(mark)
	if ss.upw.holding {
		// The request's end, held back (upstreamWriter), goes out from
		// inside the wait: no read that finds nothing before it.
		ss.upw.holding = false
		if err := ss.upw.aw.AwaitAnswer(); err != nil {
			_ = ss.upstreamWriteFailed(err) // the next read reports the loss
		}
	} else {
		_ = u.r.Wait() // an error is the next read's to report
	}
	if ss.upWaitMark.CompareAndSwap(mark, 0) {
		ss.inlineConn = nil // no kick reads it now: a dormant session keeps no upstream alive
		return true
	}
	ss.kickMu.Lock()
	_ = u.conn.SetReadDeadline(time.Time{})
	ss.upWaitMark.Store(0)
	ss.inlineConn = nil
	ss.kickMu.Unlock()
	return false
}

// kickUpstream ends the session's inline wait for an answer if it is
// still the one that began in epoch mark, with a past read deadline on the
// upstream. Safe for concurrent use with awaitAnswer.
func (ss *session) kickUpstream(mark uint64) {
	ss.kickMu.Lock()
	if ss.upWaitMark.CompareAndSwap(mark, waitKicked) {
		_ = ss.inlineConn.SetReadDeadline(time.Unix(1, 0))
	}
	ss.kickMu.Unlock()
}

// upstreamWriter is the destination of the session's upstream writer
// (ss.uw): the attached connection, in front of which it gives a held
// relay job to the relay goroutine before any write but a request's last
// one (final, set around the flush that sends it). Session goroutine only.
// sent records that the final write happened.
//
// When aw is set (the session queued for its connection), a request's
// last write whose answer the session goroutine will read does not reach
// the socket at once: aw holds its bytes (the TLS records)
// for awaitAnswer to write from inside the wait for the answer, which so
// needs no read that finds nothing first (netx.Awaiter). Whatever hands
// the connection to the relay goroutine (dispatchHeld) or leaves it
// unread (writeUpstream) sends them first. holding says aw holds them:
// only then may the session goroutine touch aw after the write, as only
// then is no relay goroutine reading the connection (which it may have
// released to another session already).
type upstreamWriter struct {
	ss          *session
	w           io.Writer
	u           *upstream    // the connection w writes
	aw          netx.Awaiter // nil: no holding
	final, sent bool
	holding     bool
}

func (w *upstreamWriter) Write(p []byte) (int, error) {
	if w.ss.heldRelay.c != nil && (!w.final || len(p) > maxInlineWrite) {
		w.ss.dispatchHeld()
	}
	w.sent = w.sent || w.final
	if w.final && w.aw != nil && w.ss.heldRelay.c != nil {
		w.aw.HoldWrites()
		w.holding = true
	}
	return w.w.Write(p)
}

// sendHeld writes what aw holds, if anything.
func (w *upstreamWriter) sendHeld() error {
	if !w.holding {
		return nil
	}
	w.holding = false
	return w.aw.SendHeld()
}
