package proxy

import "time"

// The read skipped after a quiet answer.
//
// When the relay goroutine has relayed the ReadyForQuery that answers
// the last request written upstream (nothing pending), the server sends
// nothing more until the next request, and the read the relay would try
// before waiting for it finds nothing: one system call per round trip in
// session mode (and inside transactions in transaction mode). The relay
// skips it (netx.QuietReader) when no write began since the write that
// ended that request (quietSeq), so a request written after the check is
// answered after the wait began, and the wait sees its answer. An inline
// read (inline.go) that relays a quiet answer leaving a transaction open
// hands the skip on with the attachment, for the relay's first wait.
//
// What the server sends unasked (a notification, a shutdown's error)
// between the relay's last read and that check is not seen by the wait.
// The idle sweep looks for it: a quiet wait that has lasted a sweep
// period has its socket peeked at (checkQuiet). An empty socket means
// the wait sees whatever comes next. Bytes there may be stranded, or may
// have just woken the wait, whose goroutine has yet to run: the sweep
// looks again a period later, and bytes still there under the same wait
// were missed by it. It ends that wait with a past read deadline, as the
// sweep ends other waits, and the relay reads them. So such a message
// reaches the client at most one and a half times CLIENT_IDLE_RELEASE
// late, and only when it arrives within microseconds of an answer's end;
// everything the server sends later wakes the wait as ever.

// The quietMark values of a quiet wait the sweep has looked at:
// waitChecked, the socket was empty (later bytes wake the wait: no
// further look); waitSuspect, it held bytes (look again next period).
const (
	waitChecked = waitKicked - 1
	waitSuspect = waitKicked - 2
)

// wrote records, after a flush to the upstream, whether it ended a
// request, for the relay's quiet wait (netx.QuietReader). Session
// goroutine only.
func (w *upstreamWriter) wrote(reqEnd bool) {
	u := w.u
	if u == nil || u.qr == nil {
		return
	}
	var seq uint64
	if reqEnd && !w.holding {
		seq = u.qr.WriteSeq()
	}
	u.quietSeq.Store(seq)
}

// awaitQuiet waits for the upstream's next bytes after a quiet answer,
// skipping the read that would find nothing when nothing was written
// since the request seq answered, under the idle sweep's watch
// (checkQuiet). An error is left for the next read to report. Relay
// goroutine only.
func (ss *session) awaitQuiet(u *upstream, seq uint64) {
	u.qr.SkipIdleRead(seq)
	ss.quietUp.Store(u)
	ss.quietMark.Store(ss.srv.idleEpoch.Load())
	_ = u.r.Wait()
	if ss.quietMark.Swap(0) == waitKicked {
		// The sweep found bytes the wait missed and ended it: the next
		// read takes them, under the deadline the session set, if any.
		ss.kickMu.Lock()
		_ = u.conn.SetReadDeadline(ss.upDeadline)
		ss.kickMu.Unlock()
	}
	ss.quietUp.Store(nil)
}

// quietDue reports whether the sweep that begins epoch looks at a quiet
// wait whose mark is m: one that began in epoch m and has lasted a whole
// sweep period, or one whose socket held bytes at the last look.
func quietDue(m, epoch uint64) bool {
	return m == waitSuspect || m != 0 && m < waitSuspect && m+2 <= epoch
}

// checkQuiet looks, for the idle sweep, at the socket of the quiet wait
// whose mark is m, if it still waits (see the top of this file): empty,
// the wait needs no further look; holding bytes at a first look, it is
// looked at again next period; still holding bytes then, the wait missed
// them, and checkQuiet ends it with a past read deadline. Safe for
// concurrent use with awaitQuiet.
func (ss *session) checkQuiet(m uint64) {
	ss.kickMu.Lock()
	defer ss.kickMu.Unlock()
	u := ss.quietUp.Load()
	if u == nil || ss.quietMark.Load() != m {
		return
	}
	switch {
	case u.peek() == peekNothing:
		ss.quietMark.CompareAndSwap(m, waitChecked)
	case m != waitSuspect:
		ss.quietMark.CompareAndSwap(m, waitSuspect)
	case ss.quietMark.CompareAndSwap(m, waitKicked):
		_ = u.conn.SetReadDeadline(time.Unix(1, 0))
		ss.srv.metrics.QuietWaitsRescued.Inc()
	}
}

// setUpstreamDeadline sets the read deadline of u, the session's
// attachment, recording it for a kicked quiet wait to restore. Safe for
// concurrent use with checkQuiet and awaitQuiet.
func (ss *session) setUpstreamDeadline(u *upstream, t time.Time) {
	ss.kickMu.Lock()
	ss.upDeadline = t
	_ = u.conn.SetReadDeadline(t)
	ss.kickMu.Unlock()
}
