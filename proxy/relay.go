package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// expKind says what the relay goroutine does with the upstream's answer to
// one message the session goroutine sent. Only messages whose answers the
// sidecar must recognise are queued: Parse, Close, Sync, Query and
// FunctionCall.
type expKind uint8

const (
	expParse            expKind = iota // client Parse: forward ParseComplete
	expParseInjected                   // sidecar Parse (re-prepare): swallow ParseComplete
	expParseCached                     // client Parse already prepared: a Close stood in; CloseComplete → ParseComplete
	expParseError                      // a failing Parse stood in for a client message the sidecar refuses (standInLocked): its error is replaced by err
	expClose                           // client Close: forward CloseComplete
	expCloseInjected                   // sidecar Close (LRU eviction): swallow CloseComplete
	expSync                            // Sync: forward ReadyForQuery
	expQuery                           // Query or FunctionCall: forward ReadyForQuery
	expQueryInjected                   // replayed deferred Query: swallow its CommandComplete and ReadyForQuery
	expDescribeInjected                // sidecar Describe of a statement: swallow its answer, record the result description
)

type expectation struct {
	kind expKind
	key  string    // statement key for Parse kinds; "" for the unnamed statement
	at   time.Time // when a client request (Query, FunctionCall, Sync) was sent
	// For a client's Parse (expParse, expParseCached): the client's name
	// and definition (def nil for other messages), forgotten when the
	// server fails or skips the Parse.
	client clientParse
	err    *pgerr.Error // expParseError: the error the client gets
	// quiet: an expQueryInjected whose ErrorResponse is swallowed too
	// (failedTxSQL).
	quiet bool
	// check: for expDescribeInjected, the client statement whose result
	// description the answer sets or checks.
	check *stmtDef
}

// errResultChanged is Postgres's error for a prepared statement whose
// result columns a schema change altered.
func errResultChanged() *pgerr.Error {
	return pgerr.Errorf(pgerr.FeatureNotSupported, "cached plan must not change result type")
}

// errDescribeFirst says a Bind (or Describe) of a statement must wait:
// the statement is prepared afresh and described first (see
// resultCheckLocked).
var errDescribeFirst = errors.New("statement described before its Bind")

// clientParse names the statement a client's Parse defined.
type clientParse struct {
	name string
	def  *stmtDef
}

func (k expKind) isParse() bool { return k <= expParseError }
func (k expKind) ends() bool    { return k == expSync || k == expQuery || k == expQueryInjected }

// nonexistent is a statement name no client or sidecar statement uses:
// closing it is a cheap round trip the server always acknowledges.
const nonexistent = "brw_none"

// maxKeptParse bounds the text of the last Parse a session keeps to share
// with the next one that carries the same text (see decodeParse).
const maxKeptParse = 8 << 10

// maxAnalyzed bounds the Query size the sidecar parses; larger statements
// (bulk INSERTs) are relayed without looking at them.
const maxAnalyzed = 1 << 20

var errSessionEnded = errors.New("session ended")

// errUpstreamWrite marks a failure writing to the upstream; the relay
// goroutine reports the lost connection to the client.
var errUpstreamWrite = errors.New("upstream write failed")

func (ss *session) transactionMode() bool {
	return ss.srv.cfg.Pool.Mode == config.PoolTransaction
}

// passthrough reports whether the session's statements go to the server
// under the client's own names: in session mode without a shard map the
// session keeps one upstream from its first statement to its end, so the
// client gets Postgres's own statement semantics (duplicate names,
// DEALLOCATE, pg_prepared_statements, errors at the Parse) byte for byte.
// With a shard map a session may move between shards, and its statements
// are prepared under sidecar names wherever it goes.
func (ss *session) passthrough() bool {
	return !ss.transactionMode() && !ss.srv.routingEnabled()
}

// relay runs an attached (session mode) or detached (transaction mode)
// session until the client leaves, then cleans up; or until the session
// goes dormant (idle.go), then it reports true and cleans up nothing: the
// session goes on in a fresh goroutine (run).
func (ss *session) relay() (dormant bool) {
	err := ss.clientToUpstream()
	if errors.Is(err, errDormant) {
		return true
	}
	defer ss.stopRelay()
	var pe *pgerr.Error
	if errors.As(err, &pe) {
		ss.abort(pe) // a protocol violation or limit: the client hears why
	}
	if ss.fan != nil { // a request spanning shards left unfinished
		ss.destroyFan(ss.fan)
		ss.fan = nil
		_ = ss.endFanOut(nil)
	}
	ss.lreq = nil
	ss.abandonCross() // a transaction spanning shards left open
	if errors.Is(err, errUpstreamWrite) {
		ss.awaitLostReport(err)
	}

	ss.finish(err)
	return false
}

// awaitLostReport waits (bounded) for the relay goroutine to read the end
// of an upstream whose write failed and report it to the client, and
// reports it itself when the relay did not.
func (ss *session) awaitLostReport(err error) {
	ss.mu.Lock()
	done, c, lost := ss.relayDoneLocked(), ss.up, ss.lostUp
	ss.mu.Unlock()
	if c == nil {
		// The relay had found the idle upstream dead and detached it for
		// the session to go on with a new one, but the request the write
		// was for had already been routed to it: the client hears of the
		// loss, as from a request on a connection that died under it.
		if lost != nil {
			ss.reportLost(lost, err)
		}
		return
	}
	if done != nil {
		select {
		case <-done:
		case <-time.After(2 * lostReadGrace):
		}
	}
	ss.reportLost(c.Value, err)
}

// relayJob is one attachment for the relay goroutine to serve. done is
// closed when the relay lets go of it; runRelay makes it, so an attachment
// whose answers the session goroutine reads inline allocates none.
type relayJob struct {
	c    *pool.Conn[*upstream]
	done chan struct{}
	// quiet, when not 0, is the quietSeq of the answer an inline read
	// relayed last: the relay's first wait skips its read (quiet.go).
	quiet uint64
}

// relayLetGo is the session's relayDone after an inline read let go of
// its attachment: closed, as no relay goroutine holds it.
var relayLetGo = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// relayLoop is the session's relay goroutine: it serves one attachment
// after another, so transaction pooling does not start a goroutine (and
// grow its stack again) per transaction. It ends when jobs is closed: at
// the end of the session, or when a session holding no upstream goes
// dormant (goDormant).
func (ss *session) relayLoop(jobs <-chan relayJob) {
	for j := range jobs {
		ss.upstreamToClient(j)
	}
}

// stopRelay ends the relay goroutine once the session is over.
func (ss *session) stopRelay() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.relayJobs != nil {
		close(ss.relayJobs)
		ss.relayJobs = nil
	}
}

// acquire takes an upstream connection for t from its pool and applies the
// client's settings to it. checked asks the pool to check an idle
// connection however recently it was used (see pool.AcquireChecked). The
// relay goroutine is not running; the caller owns the returned connection.
func (ss *session) acquire(t router.Target, checked bool) (*pool.Conn[*upstream], error) {
	if ss.poolOf == nil || ss.poolFor != t {
		ss.poolOf, ss.poolFor = ss.srv.pool(t), t // pools live as long as the server
	}
	p := ss.poolOf
	var c *pool.Conn[*upstream]
	var waited time.Duration
	var err error
	// One wait context serves the session's acquisitions until a
	// CancelRequest ends a wait with it.
	if ss.waitCtx == nil {
		ss.waitCtx, ss.waitCancel = context.WithCancelCause(context.Background())
	}
	ctx := ss.waitCtx
	ss.mu.Lock()
	if ss.queueable && !ss.ended {
		ss.acquireCancel = ss.waitCancel // a CancelRequest may end the wait
	}
	if ss.checkNext { // an upstream of the session died: its pool's idle ones may have too
		checked, ss.checkNext = true, false
	}
	ss.mu.Unlock()
	c, waited, err = p.AcquireTimed(ctx, checked)
	ss.queued = waited > 0
	ss.mu.Lock()
	ss.acquireCancel = nil
	ss.mu.Unlock()
	if errors.Is(context.Cause(ctx), errQueuedCancel) {
		ss.waitCtx = nil
		if err == nil {
			c.Release()
		}
		return nil, errCanceled()
	}
	if ss.waitObs == nil || ss.waitFor != t {
		ss.waitObs, ss.waitFor = ss.srv.metrics.PoolWait.WithLabelValues(t.Shard, t.Role.String()), t
	}
	ss.waitObs.Observe(waited.Seconds())
	switch {
	case errors.Is(err, pool.ErrTimeout):
		st := p.Stats()
		e := pgerr.Fatalf(pgerr.TooManyConnections, "timed out after %s waiting for an upstream connection to %s", ss.srv.cfg.Pool.AcquireTimeout, t)
		e.Detail = fmt.Sprintf("all %d connections of the pool are in use and %d clients are waiting", st.Size, st.Waiting)
		e.Hint = "raise POOL_SIZE or POOL_ACQUIRE_TIMEOUT, or use fewer concurrent sessions"
		e.Retryable = true
		return nil, e
	case errors.Is(err, pool.ErrClosed):
		return nil, errDraining
	case err != nil:
		return nil, err
	}
	if err := ss.syncSettings(c.Value); err != nil {
		c.Destroy()
		return nil, err
	}
	ss.srv.metrics.Transactions.Inc()
	return c, nil
}

// startRelay attaches c to the session and hands it to the relay
// goroutine, starting one when the session has none (its first
// attachment, or the first since it went dormant), or holds the job for an
// inline answer (inline.go). Session goroutine, with ss.mu held.
func (ss *session) startRelayLocked(c *pool.Conn[*upstream]) {
	ss.up, ss.lostUp = c, nil
	if u := c.Value; u.served.Load() != ss.pid {
		u.served.Store(ss.pid)
	}
	ss.pending, ss.synced, ss.copyIn, ss.txStatus = 0, true, false, c.Value.txStatus
	ss.expect = ss.expect[:0]
	ss.describing.Store(0)
	ss.upGone, ss.resetting, ss.resetFailed, ss.resetDone = false, false, false, false
	ss.acks = ss.acks[:0]
	ss.relayDone = nil // made by runRelay
	ss.upw = upstreamWriter{ss: ss, w: c.Value.conn, u: c.Value}
	if !ss.upDeadline.IsZero() { // set on an earlier attachment (a failed write's grace)
		ss.setUpstreamDeadline(c.Value, time.Time{})
	}
	if ss.queued {
		ss.upw.aw = c.Value.aw
	}
	ss.uw.Reset(&ss.upw)
	j := relayJob{c: c}
	if ss.mayHoldRelay() {
		ss.heldRelay = j // for an inline answer (inline.go)
		return
	}
	ss.runRelay(j)
}

// clientToUpstream forwards client messages until the client terminates,
// fails, or the session is ended, or returns errDormant when the session
// has gone dormant (idle.go). It attaches an upstream connection when
// a message arrives and none is held (transaction mode).
func (ss *session) clientToUpstream() error {
	err := ss.forwardClient()
	ss.countToUpstream()
	ss.dispatchHeld() // the session ends or goes dormant: the relay finishes the attachment
	return err
}

func (ss *session) forwardClient() error {
	for {
		if ss.heldRelay.c != nil {
			switch {
			case ss.inlineNext:
				ss.relayInline()
			case ss.cr.Buffered() == 0:
				ss.dispatchHeld() // about to wait for the client
			}
		}
		if err := ss.awaitClient(); err != nil {
			return err // errDormant included
		}
		typ, n, err := ss.cr.Next()
		ss.wake()
		if err != nil {
			return err
		}
		if typ == 'X' {
			return nil
		}
		ss.record(typ, n)
		ss.reqEnd = typ == 'S' || typ == 'Q'
		if err := ss.forwardMessage(typ, n); err != nil {
			if !errors.Is(err, errUpstreamWrite) || !ss.retry.armed {
				return err
			}
			// The connection failed under the armed request's last
			// message: the relay goroutine sees the loss too, and when it
			// takes it for a retry the request runs again elsewhere, as
			// when the host fails before answering.
			replayed, rerr := ss.endRequest()
			switch {
			case rerr != nil:
				return rerr
			case !replayed:
				return err
			}
			continue
		}
		if ss.retry.parse {
			ss.retry.ok, ss.retry.parse = false, false // the Parse went upstream: not replayable
		}
		if typ == 'S' || typ == 'Q' {
			if _, err := ss.endRequest(); err != nil {
				return err
			}
		}
	}
}

// forwardMessage relays one client message to the upstream it routes to,
// rewriting statement names and injecting the Parse and Close messages
// that keep protocol-level prepared statements working on whichever
// upstream serves the client.
func (ss *session) forwardMessage(typ byte, n int) error {
	if ss.preRead.Load() && (typ == 'Q' || typ == 'B' || typ == 'F') {
		ss.waitReadAhead()
	}
	if ss.skipStatus != 0 {
		return ss.skipToSync(typ)
	}
	if ss.parseFailed.Load() {
		ss.forgetFailedParses()
	}
	if ss.fan != nil {
		return ss.fanMessage(typ, n)
	}
	if ss.lreq != nil {
		return ss.localMessage(typ, n)
	}
	if ss.xt != nil {
		return ss.crossMessage(typ, n)
	}
	routed := ss.srv.routingEnabled()
	var body []byte
	var err error
	bindFull := false // the whole Bind body was read (to route by its parameters)
	switch typ {
	case 'P', 'D', 'C':
		body, err = ss.cr.Body()
	case 'Q':
		if n <= maxAnalyzed {
			body, err = ss.cr.Body()
		}
	case 'B':
		if routed && n <= maxAnalyzed {
			body, err = ss.cr.Body()
			bindFull = true
		} else {
			body, err = ss.cr.Peek(4096)
		}
	}
	if err != nil {
		return err
	}

	var a *analysis
	var pm parseMsg
	switch typ {
	case 'Q':
		if len(body) > 0 {
			a = ss.srv.analyzer.analyzeBytes(body[:len(body)-1])
		}
	case 'P':
		if pm, err = decodeParse(body, &parseMsg{query: ss.lastParse, oids: ss.lastOIDs}); err != nil {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Parse message")
		}
		ss.lastOIDs = pm.oids
		if a = ss.lastParseA; a == nil || pm.query != ss.lastParse {
			a = ss.srv.analyzer.analyze(pm.query)
			if len(pm.query) <= maxKeptParse {
				ss.lastParse, ss.lastParseA, ss.lastParseOK = pm.query, a, false
			}
		}
	}
	if typ == 'Q' && a != nil && a.ddl {
		ss.schemaChange()
	} else if typ == 'B' {
		if _, name, _, herr := bindHeader(body); herr == nil {
			if def := ss.stmtNamed(name); def != nil && def.a != nil && def.a.ddl {
				ss.schemaChange()
			}
		}
	}
	if typ == 'Q' && a != nil && (a.deallocate != "" || a.deallocateAll) && !ss.passthrough() {
		if done, err := ss.deallocate(a); done || err != nil {
			return err
		}
	}
	if typ == 'Q' && a != nil && a.discardAll {
		ss.stmts, ss.unnamed = map[string]*stmtDef{}, nil // the client's own; the server's go upstream
	}
	if typ == 'Q' && a != nil && ss.passthrough() {
		// The server drops the statements; the session forgets them too,
		// not to prepare them again on a new connection (reprepare).
		switch {
		case a.deallocateAll:
			ss.stmts = map[string]*stmtDef{}
		case a.deallocate != "":
			delete(ss.stmts, a.deallocate)
		}
	}
	refused := ""
	if a != nil && a.pin != "" {
		if refused = ss.pinOrRefuse(a.pin); refused != "" {
			switch typ {
			case 'Q':
				q := refusalStatement(a.pin)
				body = append([]byte(q), 0)
				n = len(body)
			}
			// A refused Parse goes through as it is, so Describe reports the
			// client's parameters; its Binds run the refusal instead.
		}
	}
	if typ == 'Q' && refused == "" && a != nil && (a.tx != txNone || a.hintsOnly) {
		if done, err := ss.deferBegin(a, string(body[:len(body)-1])); done || err != nil {
			return err
		}
	}
	if typ == 'B' && routed && bindFull {
		if done, err := ss.deferBind(body); done || err != nil {
			return err
		}
	}
	r := ss.routeMessage(typ, n, body, bindFull, a, refused != "")
	if (typ == 'B' || typ == 'Q') && (!r.readOnly || r.fan != nil || r.refuse != nil) {
		ss.retry.ok = false // only a request of reads may run again elsewhere
	}
	if r.fan != nil {
		ss.mu.Lock()
		mixed := ss.up != nil && (!ss.synced || ss.copyIn)
		if !mixed {
			if err := ss.waitQuietLocked(); err != nil {
				ss.mu.Unlock()
				return ss.sessionError(err)
			}
			if ss.inTransactionLocked() {
				// The shards join the client's transaction.
				err := ss.enterCrossLocked()
				ss.mu.Unlock()
				if err != nil {
					return ss.sessionError(err)
				}
				return ss.crossEntry(typ, n, body, a, r)
			}
			ss.mu.Unlock()
			if r.fan.NoTxBlock {
				return ss.eachShard(typ, body, r.fan)
			}
			return ss.fanOutMessage(typ, n, body, r.fan)
		}
		ss.mu.Unlock()
		r = ss.refusal(fanout.ErrMixedPipeline())
	}

	ss.mu.Lock()
	if !ss.ended && !ss.passthrough() && (ss.up == nil || (routed && ss.quietLocked())) {
		// Nothing is in flight (and, without routing, no upstream is
		// held), so Parse, Sync and Flush need no upstream. Answering them
		// here keeps a client that prepares synchronously between
		// transactions (pgbench -M prepared, libpq PQprepare) from waiting
		// for a connection while its other connections' transactions wait
		// for it, and lets the statement's first Bind choose the shard (or
		// shards). The statement is prepared upstream at its first Bind or
		// Describe; an invalid one is reported there.
		status := byte('I')
		switch {
		case len(ss.deferred) > 0:
			status = ss.deferredStatusLocked()
		case ss.up != nil:
			status = ss.txStatus
		}
		detached := ss.up == nil && len(ss.deferred) == 0
		switch {
		case typ == 'P' && refused == "":
			ss.mu.Unlock()
			if e := ss.checkParse(pm); e != nil {
				if detached {
					return ss.failLocal(e, status)
				}
				ss.mu.Lock()
				break // inside a transaction: the upstream answers, in order
			}
			if !routed && ss.cr.Buffered() == 0 && len(ss.held) == 0 {
				// The client sent the Parse alone and waits before the
				// rest of its request: it goes upstream now, so the server
				// sees the request's timing (a statement_timeout running
				// from the Parse) as from the client.
				ss.mu.Lock()
				break
			}
			def := ss.define(pm, a)
			ss.parsedLocally()
			if !routed {
				// Answered when the request ends here, or sent upstream
				// with the request's next message, which then gets the
				// server's own answer (an error at the Parse, in place of
				// ParseComplete, as from Postgres).
				ss.held = append(ss.held, heldParse{pm: pm, a: a, def: def})
				return nil
			}
			return ss.cw.send(false, &pgproto3.ParseComplete{})
		case typ == 'S':
			ss.mu.Unlock()
			return ss.cw.send(true, ss.takeHeld(&pgproto3.ReadyForQuery{TxStatus: status})...)
		case typ == 'C' && len(body) >= 2 && body[0] == 'S':
			ss.mu.Unlock()
			if err := ss.undefine(body); err != nil {
				return err
			}
			return ss.cw.send(false, ss.takeHeld(&pgproto3.CloseComplete{})...)
		case typ == 'H':
			ss.mu.Unlock()
			return ss.cw.send(true, ss.takeHeld()...)
		}
	}
	if typ == 'H' && ss.up != nil && ss.pending == 0 && ss.synced {
		ss.mu.Unlock() // Flush with nothing in flight: nothing to do
		return nil
	}
	refuse, err := ss.moveToLocked(r)
	if errors.Is(err, errNeedCrossTx) {
		if err = ss.enterCrossLocked(); err == nil {
			ss.mu.Unlock()
			return ss.crossEntry(typ, n, body, a, r)
		}
	}
	if err == nil {
		err = ss.replayDeferredLocked(typ, r)
	}
	if err != nil {
		// The request reached no server: a session outside any transaction
		// the client knows of goes on after an error that says so.
		unsent := ss.up == nil && len(ss.deferred) == 0
		ss.mu.Unlock()
		if pgerr.From(err).Code == pgerr.QueryCanceled {
			return ss.answerUnsent(typ, errCanceled())
		}
		if unsent && errors.Is(err, errNoPrimary) {
			ss.log.Warn("statement failed: no primary within FAILOVER_WAIT", zap.Error(err))
			return ss.answerUnsent(typ, pgerr.From(err))
		}
		return ss.sessionError(err)
	}
	if typ == 'Q' || typ == 'B' || typ == 'F' {
		ss.noteTxStatementLocked(typ, body, a, r)
	}
	u := ss.up.Value
	pre := ss.hbuf[:0]
	for _, h := range ss.held { // Parses held for the request: the server answers them now
		ss.synced = false
		pre = ss.parseUpstreamLocked(pre, h.pm, h.a, "", u, &h)
	}
	if cap(pre) <= 64<<10 {
		ss.hbuf = pre[:0] // keep the grown scratch buffer
	}
	ss.held = ss.held[:0]
	out, stream, skip, err := ss.rewriteLocked(typ, n, body, bindFull, pm, a, refused, refuse, u)
	if errors.Is(err, errDescribeFirst) {
		err = ss.awaitDescriptionLocked(pre, out, u)
		pre = nil
		if err == nil {
			out, stream, skip, err = ss.rewriteLocked(typ, n, body, bindFull, pm, a, refused, refuse, u)
		}
		ss.descChecked = nil
	}
	if err == nil && stream == 0 && refuse == nil && refused == "" && (typ == 'S' || typ == 'Q') {
		ss.armRetryLocked(typ)
	}
	ss.mu.Unlock()
	if err != nil {
		return err
	}
	if len(pre) > 0 {
		if _, err := ss.uw.Write(pre); err != nil {
			return ss.upstreamWriteFailed(err)
		}
	}
	if cap(out) <= 64<<10 {
		ss.wbuf = out[:0] // keep the grown scratch buffer
	}
	return ss.writeUpstream(out, stream, skip)
}

// schemaChange records that the client sent a statement changing the
// schema: a new schema generation starts now, and another when the
// statement's transaction ends (statements prepared in between may have
// seen the old schema). Session goroutine only.
func (ss *session) schemaChange() {
	ss.srv.schemaChanged()
	ss.mu.Lock()
	ss.ddlSent = true
	ss.mu.Unlock()
}

// define records a statement the client prepared (its Parse answered by
// the sidecar); it is prepared upstream where it is first bound or
// described. It returns the record. Session goroutine only.
func (ss *session) define(pm parseMsg, a *analysis) *stmtDef {
	if pm.name == "" {
		ss.unnamed = newUnnamedDef(pm.query, pm.oids, a)
		return ss.unnamed
	}
	def := newStmtDef(pm.query, pm.oids, a, ss.srv.schemaGen.Load())
	ss.stmts[pm.name] = def
	return def
}

// defineFrom records the statement a Parse body defines, as define does.
// Session goroutine only.
func (ss *session) defineFrom(body []byte) error {
	pm, err := decodeParse(body, &parseMsg{query: ss.lastParse, oids: ss.lastOIDs})
	if err != nil {
		return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Parse message")
	}
	ss.define(pm, ss.srv.analyzer.analyze(pm.query))
	return nil
}

// undefine forgets the statement a Close of a statement (body 'S' name)
// names. Session goroutine only.
func (ss *session) undefine(body []byte) error {
	name, _, err := cstr(body[1:])
	if err != nil {
		return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Close message")
	}
	if name == "" {
		ss.unnamed = nil
	} else {
		delete(ss.stmts, name)
	}
	return nil
}

// routeMessage says where one client message goes: Query and Bind by the
// router (with routing on), everything else where the session already is.
// a is the analysis of a Query's text.
func (ss *session) routeMessage(typ byte, n int, body []byte, bindFull bool, a *analysis, pinRefused bool) routeResult {
	if !ss.srv.routingEnabled() {
		return routeResult{follow: true}
	}
	if pinRefused {
		return ss.currentOrPreferred()
	}
	switch typ {
	case 'Q':
		if body == nil {
			ss.mu.Lock()
			h := ss.hintsLocked()
			ss.mu.Unlock()
			if h.team == "" && h.shard == "" {
				e := pgerr.Errorf(pgerr.ProgramLimitExceeded, "a query of %d bytes is too large for the sidecar to route", n)
				e.Hint = "SET brownie.team_id or brownie.shard before sending it, or send its rows with COPY"
				return ss.refusal(e)
			}
			return routeResult{target: ss.preferredTarget()}
		}
		return ss.route(router.StmtInfo{SQL: string(body[:len(body)-1])}, a)
	case 'B':
		_, stmtName, _, err := bindHeader(body)
		if err != nil {
			return ss.currentOrPreferred() // rewriteLocked reports the protocol violation
		}
		def := ss.unnamed
		if stmtName != "" {
			def = ss.stmts[stmtName]
		}
		if def == nil || def.poison {
			return ss.currentOrPreferred()
		}
		st := router.StmtInfo{SQL: def.query, ParamOIDs: def.oids}
		if bindFull {
			var b pgproto3.Bind
			if b.Decode(body) != nil {
				return ss.currentOrPreferred()
			}
			st.Params, st.Formats = b.Parameters, b.ParameterFormatCodes
		}
		return ss.route(st, def.a)
	}
	return ss.currentOrPreferred()
}

// rewriteLocked builds the bytes to send for one client message and does
// the bookkeeping for it. stream > 0 means that many bytes of the body
// follow from the client reader after out (skip bytes of it dropped
// first). Called with ss.mu held and the session attached.
//
// bindFull says a Bind's whole body is in body (else only a prefix was
// peeked); refuse, when set, is raised in place of a Query or Bind.
func (ss *session) rewriteLocked(typ byte, n int, body []byte, bindFull bool, pm parseMsg, a *analysis, refused string, refuse *pgerr.Error, u *upstream) (out []byte, stream, skip int, err error) {
	m := ss.srv.metrics
	if ss.passthrough() {
		return ss.passThroughLocked(typ, n, body, bindFull, pm, a, u)
	}
	switch typ {
	case 'P':
		ss.synced = false
		return ss.parseUpstreamLocked(ss.wbuf[:0], pm, a, refused, u, nil), 0, 0, nil

	case 'B', 'D':
		var stmtName string
		var rest int
		if typ == 'B' {
			_, stmtName, rest, err = bindHeader(body)
		} else if len(body) > 0 && body[0] == 'S' {
			stmtName, _, err = cstr(body[1:])
			rest = 1 + len(stmtName) + 1
		} else {
			rest = -1 // Describe of a portal: unchanged
		}
		if err != nil {
			return nil, 0, 0, pgerr.Fatalf(pgerr.ProtocolViolation, "invalid %q message", typ)
		}
		ss.synced = false
		// passThrough sends the message unchanged: a Bind's body is still
		// unread (only peeked), a Describe's was read.
		passThrough := func() ([]byte, int, int, error) {
			if typ == 'B' && !bindFull {
				return wire.AppendHeader(ss.wbuf[:0], typ, n), n, 0, nil
			}
			return append(wire.AppendHeader(ss.wbuf[:0], typ, n), body...), 0, 0, nil
		}
		if rest < 0 {
			return passThrough()
		}
		def := ss.unnamed
		if stmtName != "" {
			def = ss.stmts[stmtName]
		}
		if def == nil { // unknown: let the server say so, in its words
			return passThrough()
		}
		if typ == 'B' && def.a != nil && def.a.touchesState() {
			ss.dirty.note(def.a)
		}
		var held *cachedStmt
		if stmtName != "" && refuse == nil && !def.poison {
			var check resultCheck
			switch check, held = ss.resultCheckLocked(u, def); check {
			case resultChanged:
				// Postgres fails the Bind (or Describe): a failing Parse
				// stands in for it, its error replaced, and the server
				// skips the rest of the request, as after Postgres's.
				out = ss.standInLocked(ss.wbuf[:0], errResultChanged())
				if typ == 'B' && !bindFull {
					return out, 0, n, nil // the Bind's body is dropped
				}
				return out, 0, 0, nil
			case resultUnknown:
				out, _ := ss.ensurePreparedLocked(&ss.expect, u, def, false)
				ss.descWait = def
				return append(out, 'H', 0, 0, 0, 4), 0, 0, errDescribeFirst
			}
		}
		portal, _, _, _ := bindHeader(body)
		if typ == 'B' && (def.poison || refuse != nil) {
			// Bind the refusal, prepared as the unnamed statement, with no
			// parameters: its Execute raises the error in order.
			var q string
			if refuse != nil {
				q = raiseStatement(refuse)
			} else {
				m.PinRefusals.WithLabelValues(def.a.pin).Inc()
				q = refusalStatement(def.a.pin)
			}
			u.unnamed = nil
			ss.expect = append(ss.expect, expectation{kind: expParseInjected})
			out = appendParse(ss.wbuf[:0], "", q, nil)
			out = wire.AppendHeader(out, 'B', len(portal)+1+1+6)
			out = append(append(out, portal...), 0)
			out = append(out, 0, 0, 0, 0, 0, 0, 0)
			if bindFull {
				return out, 0, 0, nil
			}
			return out, 0, n, nil
		}
		var sname string
		if held != nil {
			sname = held.name
		} else {
			out, sname = ss.ensurePreparedLocked(&ss.expect, u, def, stmtName == "")
		}
		if out == nil {
			out = ss.wbuf[:0] // nothing to inject: the scratch buffer, not a new one per Bind
		}
		if typ == 'D' {
			out = wire.AppendHeader(out, 'D', 1+len(sname)+1)
			out = append(append(append(out, 'S'), sname...), 0)
			return out, 0, 0, nil
		}
		newLen := n - len(stmtName) + len(sname)
		out = wire.AppendHeader(out, 'B', newLen)
		out = append(append(out, portal...), 0)
		out = append(append(out, sname...), 0)
		if bindFull {
			return append(out, body[rest:]...), 0, 0, nil
		}
		return out, n - rest, rest, nil

	case 'C':
		ss.synced = false
		if len(body) >= 2 && body[0] == 'S' {
			name, _, cerr := cstr(body[1:])
			if cerr != nil {
				return nil, 0, 0, pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Close message")
			}
			ss.expect = append(ss.expect, expectation{kind: expClose})
			if name == "" {
				ss.unnamed, u.unnamed = nil, nil
				return appendClose(ss.wbuf[:0], 'S', ""), 0, 0, nil
			}
			// The server-side statement may serve other clients: keep it.
			delete(ss.stmts, name)
			return appendClose(ss.wbuf[:0], 'S', nonexistent), 0, 0, nil
		}
		ss.expect = append(ss.expect, expectation{kind: expClose})
		return append(wire.AppendHeader(ss.wbuf[:0], 'C', n), body...), 0, 0, nil

	}
	return ss.rewriteCommonLocked(typ, n, body, a, refused, refuse, u)
}

// rewriteCommonLocked is rewriteLocked for the messages that need no
// statement renaming: requests (Query, FunctionCall, Sync), COPY data and
// the rest. Called with ss.mu held and the session attached.
func (ss *session) rewriteCommonLocked(typ byte, n int, body []byte, a *analysis, refused string, refuse *pgerr.Error, u *upstream) (out []byte, stream, skip int, err error) {
	m := ss.srv.metrics
	switch typ {
	case 'Q':
		ss.pending++
		ss.synced = true
		// A simple Query drops the unnamed statement, the client's as the
		// server's.
		ss.unnamed, u.unnamed = nil, nil
		if a != nil && a.discard {
			// DISCARD ALL or DEALLOCATE ALL drops every statement of the
			// server's, other clients' too: they prepare theirs again.
			u.stmts.clear()
		}
		ss.expect = append(ss.expect, expectation{kind: expQuery, at: time.Now()})
		if a != nil && a.touchesState() {
			ss.dirty.note(a)
		}
		if refused != "" {
			m.PinRefusals.WithLabelValues(refused).Inc()
		}
		if refuse != nil {
			body = append([]byte(raiseStatement(refuse)), 0)
		}
		if body == nil {
			return wire.AppendHeader(ss.wbuf[:0], 'Q', n), n, 0, nil
		}
		return append(wire.AppendHeader(ss.wbuf[:0], 'Q', len(body)), body...), 0, 0, nil

	case 'F':
		ss.pending++
		ss.synced = true
		ss.expect = append(ss.expect, expectation{kind: expQuery, at: time.Now()})
	case 'S':
		ss.upSkipping = false
		if !ss.copyIn { // Sync inside COPY IN gets no ReadyForQuery
			ss.pending++
			ss.expect = append(ss.expect, expectation{kind: expSync, at: time.Now()})
		}
		ss.synced = true
	case 'c', 'f':
		ss.copyIn = false
		ss.synced = true
	case 'H', 'd':
	default:
		ss.synced = false
	}
	return wire.AppendHeader(ss.wbuf[:0], typ, n), n, 0, nil
}

// parseUpstreamLocked appends to dst what sends a client's Parse to u:
// the unnamed statement as it is; a named one under its sidecar name (or,
// when u already has it, a Close standing in for its ParseComplete); a
// name the client already uses, a failing Parse whose error becomes
// Postgres's 42P05 (held Parses were checked when they arrived). held is
// the Parse when it was held, nil when it arrived now. Called with ss.mu
// held and the session attached.
func (ss *session) parseUpstreamLocked(dst []byte, pm parseMsg, a *analysis, refused string, u *upstream, held *heldParse) []byte {
	m := ss.srv.metrics
	if pm.name == "" {
		var def *stmtDef
		if held != nil {
			// The record define made when the Parse arrived: no server
			// has seen it yet, so it is as fresh as a new one.
			def = held.def
		} else {
			def = newUnnamedDef(pm.query, pm.oids, a)
		}
		def.poison = refused != ""
		ss.unnamed, u.unnamed = def, def
		ss.expect = append(ss.expect, expectation{kind: expParse, client: clientParse{def: def}})
		return appendParse(dst, "", pm.query, pm.oids)
	}
	if held == nil && ss.stmts[pm.name] != nil {
		return ss.standInLocked(dst, errDuplicateStatement(pm.name))
	}
	def := newStmtDef(pm.query, pm.oids, a, ss.srv.schemaGen.Load())
	def.poison = refused != ""
	ss.stmts[pm.name] = def
	cp := clientParse{name: pm.name, def: def}
	if cs, ok := u.stmts.entry(def.key); ok {
		m.StmtCache.WithLabelValues("hit").Inc()
		def.desc = cs.desc
		ss.expect = append(ss.expect, expectation{kind: expParseCached, client: cp})
		return appendClose(dst, 'S', nonexistent)
	}
	m.StmtCache.WithLabelValues("miss").Inc()
	out, name := ss.prepareLocked(&ss.expect, dst, u, def, expParse)
	ss.expect[len(ss.expect)-1].client = cp
	return ss.describeLocked(out, def, name)
}

// standInLocked appends to dst a Parse that always fails, standing in for
// a client message the sidecar answers with e: the relay goroutine puts e
// in place of the server's error, and the server skips the rest of the
// request up to its Sync, as after an error of its own (an open
// transaction is aborted). Called with ss.mu held and the session attached.
func (ss *session) standInLocked(dst []byte, e *pgerr.Error) []byte {
	ss.expect = append(ss.expect, expectation{kind: expParseError, err: e})
	return appendParse(dst, nonexistent, "brw_duplicate_name", nil) // a syntax error, always
}

// passThroughLocked is rewriteLocked for a passthrough session: messages
// go upstream as the client sent them; the sidecar only keeps the
// bookkeeping that matches answers with requests and notes statements that
// change session settings. Called with ss.mu held and the session attached.
func (ss *session) passThroughLocked(typ byte, n int, body []byte, bindFull bool, pm parseMsg, a *analysis, u *upstream) (out []byte, stream, skip int, err error) {
	whole := func() ([]byte, int, int, error) {
		return append(wire.AppendHeader(ss.wbuf[:0], typ, n), body...), 0, 0, nil
	}
	switch typ {
	case 'P':
		ss.synced = false
		def := newUnnamedDef(pm.query, pm.oids, a)
		if pm.name == "" {
			ss.unnamed = def
		} else {
			ss.stmts[pm.name] = def
		}
		u.unnamed = nil
		ss.expect = append(ss.expect, expectation{kind: expParse, client: clientParse{name: pm.name, def: def}})
		return whole()
	case 'B':
		ss.synced = false
		if _, stmtName, _, herr := bindHeader(body); herr == nil {
			def := ss.unnamed
			if stmtName != "" {
				def = ss.stmts[stmtName]
			}
			if def != nil && def.a != nil && def.a.touchesState() {
				ss.dirty.note(def.a)
			}
		}
		if !bindFull {
			return wire.AppendHeader(ss.wbuf[:0], typ, n), n, 0, nil
		}
		return whole()
	case 'C':
		ss.synced = false
		if len(body) >= 2 && body[0] == 'S' {
			if name, _, cerr := cstr(body[1:]); cerr == nil && name != "" {
				delete(ss.stmts, name)
			}
		}
		ss.expect = append(ss.expect, expectation{kind: expClose})
		return whole()
	case 'D':
		ss.synced = false
		return whole()
	}
	return ss.rewriteCommonLocked(typ, n, body, a, "", nil, u)
}

// ensurePreparedLocked makes sure def is prepared on u (injecting a Parse
// if not) and returns the bytes to send first and the server-side name.
// The injected messages' expectations go on q (the session's queue, or a
// fan-out leg's).
func (ss *session) ensurePreparedLocked(q *[]expectation, u *upstream, def *stmtDef, unnamed bool) ([]byte, string) {
	if unnamed {
		if u.unnamed == def {
			return nil, ""
		}
		u.unnamed = def
		ss.srv.metrics.StmtCache.WithLabelValues("reprepare").Inc()
		*q = append(*q, expectation{kind: expParseInjected})
		return appendParse(nil, "", def.query, def.oids), ""
	}
	if name, ok := u.stmts.lookup(def.key); ok {
		return nil, name
	}
	ss.srv.metrics.StmtCache.WithLabelValues("reprepare").Inc()
	out, name := ss.prepareLocked(q, nil, u, def, expParseInjected)
	if q == &ss.expect {
		out = ss.describeLocked(out, def, name)
	}
	return out, name
}

// describeLocked appends a Describe of def's statement, just prepared
// under name on the session's upstream, whose answer the relay goroutine
// swallows: it records the statement's result description on the upstream
// and, the first time, on def (see stmtDef.desc), or finds that it
// changed. Called with ss.mu held and the session attached.
func (ss *session) describeLocked(out []byte, def *stmtDef, name string) []byte {
	if !def.fixedResult {
		return out
	}
	ss.expect = append(ss.expect, expectation{kind: expDescribeInjected, key: def.key, check: def})
	ss.describing.Add(1)
	return appendDescribeStmt(out, name)
}

type resultCheck uint8

const (
	resultSame    resultCheck = iota // bind as usual
	resultChanged                    // fail the Bind (or Describe) with errResultChanged
	resultUnknown                    // prepare and describe the statement first
)

// resultCheckLocked keeps a client's prepared statement returning what it
// returned when the client prepared it, as Postgres does, which answers a
// Bind or Describe of a statement whose result columns a schema change
// altered with 0A000 "cached plan must not change result type"; so does
// the sidecar, on an upstream holding a statement of the same key
// prepared with other columns (resultChanged), and where it prepares the
// statement afresh after a schema change it saw (a new schema
// generation): there the statement is described first (resultUnknown),
// before the client's message goes, since bound as the client built the
// Bind it would fail with another error or return rows of other columns
// than the client was told. Otherwise the Describe goes with the Parse,
// unwaited, and a change made on the server directly is found there and
// fails the statement's later uses. Only queries and DML statements are
// checked (stmtDef.fixedResult): a FETCH prepared before its cursor was
// declared describes no columns, then returns the cursor's, as in
// Postgres. held is u's statement when the check looked it up, for the
// caller to bind without a second lookup. Called with ss.mu held and the
// session attached to u; def is a named statement.
func (ss *session) resultCheckLocked(u *upstream, def *stmtDef) (check resultCheck, held *cachedStmt) {
	if def.resultChanged {
		return resultChanged, nil
	}
	if !def.fixedResult || def == ss.descChecked {
		return resultSame, nil
	}
	if cs, ok := u.stmts.entry(def.key); ok {
		switch {
		case def.desc == "":
			def.desc = cs.desc
		case cs.desc != "" && cs.desc != def.desc:
			def.resultChanged = true
			return resultChanged, nil
		}
		return resultSame, cs
	}
	if def.desc == "" || def.gen == ss.srv.schemaGen.Load() || ss.upSkipping {
		// Nothing to check against; or no schema change was seen since
		// the client prepared it (the Describe sent with the Parse still
		// finds one made unseen, for the statement's next Bind); or the
		// server skips messages up to the request's Sync after an error,
		// and would not answer.
		return resultSame, nil
	}
	return resultUnknown, nil
}

// awaitDescriptionLocked sends pre and out (the statement's Parse and
// Describe, and a Flush), and waits for the relay goroutine to take the
// answer (takeDescription) or drop it after an error. It returns with
// ss.mu held, as it was called, and an error when the session ended
// meanwhile.
func (ss *session) awaitDescriptionLocked(pre, out []byte, u *upstream) error {
	def := ss.descWait
	ss.mu.Unlock()
	_, err := ss.uw.Write(pre)
	if err == nil {
		_, err = ss.uw.Write(out)
	}
	if err == nil {
		err = ss.uw.Flush()
	}
	ss.srv.metrics.ToUpstream.Add(float64(len(pre) + len(out)))
	ss.mu.Lock()
	if err != nil {
		ss.descWait = nil
		return ss.upstreamWriteFailedLocked(err)
	}
	for ss.descWait == def && !ss.ended && ss.up != nil && ss.up.Value == u {
		ss.waitLocked()
	}
	if ss.descWait == def { // the upstream was lost: the relay goroutine reports it
		ss.descWait = nil
		return errSessionEnded
	}
	ss.descChecked = def
	return nil
}

// prepareLocked appends a Parse of def under a new sidecar name on u,
// preceded by Closes of the statements the LRU evicts, queuing their
// expectations on q, and returns the bytes and the name.
func (ss *session) prepareLocked(q *[]expectation, out []byte, u *upstream, def *stmtDef, kind expKind) ([]byte, string) {
	name, evicted := u.stmts.add(def.key)
	for _, e := range evicted {
		ss.srv.metrics.StmtCache.WithLabelValues("eviction").Inc()
		out = appendClose(out, 'S', e)
		*q = append(*q, expectation{kind: expCloseInjected})
	}
	*q = append(*q, expectation{kind: kind, key: def.key})
	return appendParse(out, name, def.query, def.oids), name
}

// writeUpstream sends out, then skip bytes of the current client body are
// dropped and stream bytes copied, and flushes when no more client input
// is buffered. Only the session goroutine writes upstream, through its own
// buffered writer: once the relay goroutine hands the connection back to
// the pool, nothing of the session's is left in a shared buffer.
func (ss *session) writeUpstream(out []byte, stream, skip int) error {
	if _, err := ss.uw.Write(out); err != nil {
		return ss.upstreamWriteFailed(err)
	}
	if skip > 0 {
		if err := ss.cr.Skip(skip); err != nil {
			return err
		}
	}
	if stream > 0 {
		if stream <= largeMessage {
			body, err := ss.cr.Body()
			if err != nil {
				return err
			}
			if _, err := ss.uw.Write(body); err != nil {
				return ss.upstreamWriteFailed(err)
			}
		} else if err := ss.cr.CopyBody(&ss.uw); err != nil {
			return ss.upstreamWriteFailed(err)
		}
	}
	ss.toUpstream += len(out) + stream
	if ss.cr.Buffered() == 0 {
		ss.countToUpstream()
		ss.upw.final, ss.upw.sent = ss.reqEnd, false
		err := ss.uw.Flush()
		ss.upw.final = false
		if err != nil {
			return ss.upstreamWriteFailed(err)
		}
		ss.upw.wrote(ss.reqEnd)
		// The request's end went out with nothing read yet: the session
		// goroutine reads its answer (inline.go).
		ss.inlineNext = ss.upw.sent && ss.heldRelay.c != nil
		if !ss.inlineNext {
			if err := ss.upw.sendHeld(); err != nil {
				return ss.upstreamWriteFailed(err)
			}
		}
	} else if ss.toUpstream >= maxUncounted {
		ss.countToUpstream()
	}
	return nil
}

// countToUpstream adds the bytes writeUpstream sent since it last did to
// the relayed-bytes metric: once per batch of client messages rather than
// per message. Session goroutine only.
func (ss *session) countToUpstream() {
	if ss.toUpstream > 0 {
		ss.srv.metrics.ToUpstream.Add(float64(ss.toUpstream))
		ss.toUpstream = 0
	}
}

func (ss *session) upstreamWriteFailed(err error) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.upstreamWriteFailedLocked(err)
}

// upstreamWriteFailedLocked handles a failed write to the attached
// upstream. The connection is not closed at once: the relay goroutine
// first reads what the server sent before it went away (its FATAL, which
// the client gets as its one error), then reports the loss; a short read
// deadline bounds the wait when the server sent nothing.
func (ss *session) upstreamWriteFailedLocked(err error) error {
	ss.writeFailed(ss.up, err)
	return errUpstreamWrite
}

// writeFailed logs a failed write to c (nil: none attached) and bounds
// the read that will report its loss. It needs no lock: c is the
// caller's.
func (ss *session) writeFailed(c *pool.Conn[*upstream], err error) {
	ss.log.Warn("upstream write failed", zap.Error(err))
	if c != nil {
		ss.setUpstreamDeadline(c.Value, time.Now().Add(lostReadGrace))
	}
}

// lostReadGrace bounds how long the relay goroutine keeps reading an
// upstream whose write failed, for the server's last words.
const lostReadGrace = 500 * time.Millisecond

// sessionError reports an error met while attaching mid-session and ends
// the session.
func (ss *session) sessionError(err error) error {
	if errors.Is(err, errSessionEnded) {
		return err
	}
	ss.abort(err)
	return errSessionEnded
}

// pinOrRefuse applies POOL_PIN_POLICY to a statement needing a pin. It
// returns the reason when the statement must be refused instead.
func (ss *session) pinOrRefuse(reason string) string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pins[reason] {
		return ""
	}
	if ss.pins[PinSessionMode] {
		// Session pooling keeps the upstream anyway and counts no pin; the
		// reason is recorded as state living only on that backend, which
		// decides whether the session survives the backend's death.
		ss.pins[reason] = true
		return ""
	}
	if ss.srv.cfg.Pool.PinPolicy == config.PinError {
		return reason
	}
	if ss.pinReason == "" {
		ss.pinReason = reason
		ss.srv.metrics.PinnedSessions.WithLabelValues(reason).Inc()
		ss.log.Debug("session pinned", zap.String("reason", reason))
	}
	ss.pins[reason] = true
	return ""
}

// unpinMetricLocked drops the session from the pinned gauge.
func (ss *session) unpinMetricLocked() {
	if ss.pinReason != "" {
		ss.srv.metrics.PinnedSessions.WithLabelValues(ss.pinReason).Dec()
		ss.pinReason = ""
	}
}

// refusalStatement is what a statement refused by POOL_PIN_POLICY=error is
// replaced with (see raiseStatement).
func refusalStatement(reason string) string {
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "%s is not supported in transaction pooling mode", pinFeature[reason])
	e.Hint = "set POOL_PIN_POLICY=pin to keep such sessions on one upstream connection, or use POOL_MODE=session"
	return raiseStatement(e)
}

// upstreamToClient forwards upstream messages of one attachment to the
// client. It owns the upstream reader. At an idle ReadyForQuery it settles
// changed session state and, in transaction mode, hands the connection
// back to the pool. When the client has gone it stops after the reset
// (recording resetDone) for the session goroutine to release or destroy.
func (ss *session) upstreamToClient(j relayJob) {
	ss.relayAnswers(j.c, j.done, false, j.quiet)
}

// relayAnswers is upstreamToClient, run by the relay goroutine, or, with
// inline, the session goroutine's inline read of an answer (inline.go):
// that ends at the answer's ReadyForQuery, handing the attachment on to
// the relay goroutine when it stays attached, and earlier when the
// server waits for the client (COPY FROM STDIN) or the answer is slow.
// skipSeq, when not 0, is the quietSeq of the quiet answer relayed last
// (by an inline read handing on): the first wait skips its read, as the
// waits after later quiet answers do (quiet.go).
func (ss *session) relayAnswers(c *pool.Conn[*upstream], done chan struct{}, inline bool, skipSeq uint64) {
	u := c.Value
	m := ss.srv.metrics
	handedOn := false
	defer func() {
		if !handedOn {
			ss.cw.mu.Lock()
			ss.cw.countRelayedLocked(m.ToClient)
			ss.cw.mu.Unlock()
			if inline {
				ss.relayDone = relayLetGo // on the session goroutine, which alone reads it
			} else {
				close(done)
			}
		}
	}()
	handOn := func(quiet uint64) {
		handedOn = true
		ss.runRelay(relayJob{c: c, done: done, quiet: quiet})
	}
	copyIn := false // the server waits for the client's COPY data
	for {
		if inline && (copyIn || u.r.Buffered() == 0 && !ss.awaitAnswer(u)) {
			handOn(0)
			return
		}
		if skipSeq != 0 {
			if u.r.Buffered() == 0 {
				ss.awaitQuiet(u, skipSeq)
			}
			skipSeq = 0
		}
		typ, n, err := u.r.Next()
		copyIn = typ == 'G' || typ == 'W' // CopyInResponse, CopyBothResponse
		if err != nil {
			if ss.isParking() {
				return
			}
			ss.upstreamDied(c, err)
			return
		}
		var body []byte
		stream := n > largeMessage && typ != 'E' && typ != 'Z' && typ != 'S' && (typ != 'T' || ss.describing.Load() == 0)
		if !stream {
			if body, err = u.r.Body(); err != nil {
				ss.upstreamDied(c, err)
				return
			}
		}
		forward := true
		if ss.injected.Load() > 0 && (typ == 'C' || typ == 'Z' || typ == 'E') {
			if ss.swallowInjected(typ, body) {
				continue
			}
		}
		if ss.describing.Load() > 0 && (typ == 't' || typ == 'T' || typ == 'n') && ss.takeDescription(typ, body, u) {
			continue
		}
		switch typ {
		case '1', '3':
			forward, typ = ss.completeLocked(typ, u)
		case 'E':
			ss.mu.Lock()
			var standIn *pgerr.Error // the sidecar's error in this one's place
			if len(ss.expect) > 0 && ss.expect[0].kind == expParseError {
				standIn = ss.expect[0].err
			}
			ss.mu.Unlock()
			if standIn != nil {
				m.Errors.WithLabelValues("sidecar", standIn.Code.Class()).Inc()
			} else {
				m.Errors.WithLabelValues("upstream", errorClass(body)).Inc()
			}
			if staleStatementError(body) {
				ss.srv.schemaChanged()
			}
			if fatalError(body) {
				if ss.holdIdleFatal(body) || ss.holdRetryFatal(body) {
					continue
				}
				ss.fatalSeen.Store(true)
			}
			ss.mu.Lock()
			if ss.resetting {
				ss.resetFailed = true
			}
			if ss.preRead.Load() {
				ss.preErr = true
			}
			if standIn != nil {
				body = standIn.Encode(nil)[5:] // the sidecar's error stands in for the server's
				n = len(body)
			}
			ss.dropSkippedLocked(u)
			ss.mu.Unlock()
		case 'N':
			if errorClass(body) == "57" && (ss.idleOn(c) || ss.retryPending() || ss.answerComplete()) {
				// A shutdown's WARNING (pg_ctl stop -m immediate) to a
				// session idle on the connection, running a read that
				// will run again, or whose read's whole answer but its
				// ReadyForQuery was relayed: the loss that follows is the
				// session's to hide, so is its announcement.
				if ss.retryPending() {
					ss.noteShutdownWarning()
				}
				ss.log.Debug("server notice on an idle upstream not relayed", zap.String("message", errorField(body, 'M')))
				continue
			}
		case 'S':
			// Reported values reach the client just before the next
			// ReadyForQuery, as the server reports them, and only when they
			// differ from what the client was told (the sidecar's own
			// setting changes in between cancel out).
			u.setParam(body)
			forward = false
		case 'G':
			ss.mu.Lock()
			ss.copyIn = true
			ss.mu.Unlock()
		case 'A':
			// A notification names the sidecar pid of the client whose
			// transaction sent it (the client's own, from this backend), so
			// clients see the pids they were given, as from Postgres.
			if len(body) >= 4 {
				switch from := binary.BigEndian.Uint32(body); {
				case from == u.pid:
					binary.BigEndian.PutUint32(body, ss.pid)
				case u.clients != nil:
					if v, ok := u.clients.Load(backendKey{u.target.Host.Addr, from}); ok {
						if pid := v.(*upstream).served.Load(); pid != 0 {
							binary.BigEndian.PutUint32(body, pid)
						}
					}
				}
			}
		case 'Z':
			if err := ss.releaseAcks(); err != nil {
				ss.discard.Store(true)
			}
			if len(body) != 1 {
				ss.upstreamLost(u, errors.New("malformed ReadyForQuery"))
				return
			}
			stop, quiet, seq := ss.readyForQuery(c, body[0])
			if stop {
				return
			}
			skipSeq = seq
			if inline && quiet {
				handOn(skipSeq) // still attached, waiting for the client
				return
			}
			continue
		}
		if ss.retryArmed.Load() {
			ss.noteAnswerEnd(typ)
		}
		if !forward {
			continue
		}
		if ss.retryPending() {
			if held := ss.holdAck(typ, n, body, stream); held {
				continue
			}
			ss.retryAnswered.Store(true) // the request's answer reaches the client: no retry
			if err := ss.releaseAcks(); err != nil {
				ss.discard.Store(true)
			}
		}
		if ss.discard.Load() {
			if stream {
				if err := u.r.CopyBody(discardWriter{}); err != nil {
					ss.upstreamLost(u, err)
					return
				}
			}
			continue
		}
		if err := ss.forward(typ, n, body, u, stream); err != nil {
			ss.discard.Store(true) // client gone; keep reading so the reset can finish
			if stream {            // the upstream reader stopped mid-message
				ss.upstreamLost(u, err)
				return
			}
		}
	}
}

// isParking reports whether the session is stopping the relay goroutine to
// park its upstream.
func (ss *session) isParking() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.parking
}

// swallowInjected consumes the CommandComplete and ReadyForQuery of a
// replayed deferred statement (the client already had the sidecar's). It
// reports whether the message was swallowed.
func (ss *session) swallowInjected(typ byte, body []byte) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.expect) == 0 || ss.expect[0].kind != expQueryInjected || (typ == 'E' && !ss.expect[0].quiet) {
		return false
	}
	if typ == 'Z' {
		ss.dropExpectLocked(1)
		if ss.pending > 0 {
			ss.pending--
		}
		if len(body) == 1 {
			ss.txStatus = body[0]
			if ss.up != nil {
				ss.up.Value.txStatus = body[0]
			}
		}
		ss.injected.Add(-1)
		ss.cond.Broadcast()
	}
	return true
}

// takeDescription swallows the answer to a Describe the sidecar sent
// (describeLocked): its ParameterDescription, then the RowDescription or
// NoData whose result description it records, on the statement of u and
// on the client's statement (or, when that already has one that differs,
// marks it changed); then a Bind waiting for it goes on. It reports
// whether the message was the answer. Relay goroutine only.
func (ss *session) takeDescription(typ byte, body []byte, u *upstream) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.expect) == 0 || ss.expect[0].kind != expDescribeInjected {
		return false
	}
	if typ == 't' {
		return true
	}
	e := ss.expect[0]
	ss.dropExpectLocked(1)
	defer ss.describeEndedLocked(e)
	if d := resultDesc(typ, body); d != "" {
		u.stmts.described(e.key, d)
		switch def := e.check; {
		case def.desc == "":
			def.desc = d
		case def.desc != d:
			def.resultChanged = true
			ss.log.Info("prepared statement refused: a schema change altered its result columns")
			if def.gen == ss.srv.schemaGen.Load() {
				ss.srv.schemaChanged() // made unseen (on the server directly): from now on it is
			}
		}
	}
	return true
}

// describeEndedLocked notes that the server answered, or skipped, the
// sidecar's Describe e: a Bind waiting for it goes on. Called with ss.mu
// held.
func (ss *session) describeEndedLocked(e expectation) {
	ss.describing.Add(-1)
	if ss.descWait == e.check {
		ss.descWait = nil
		ss.cond.Broadcast()
	}
}

// completeLocked handles ParseComplete ('1') and CloseComplete ('3'): it
// matches them with the queued expectation and says whether to forward and
// as which type.
func (ss *session) completeLocked(typ byte, u *upstream) (bool, byte) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.expect) == 0 {
		ss.log.Warn("unexpected completion from upstream", zap.String("type", string(typ)))
		return true, typ
	}
	e := ss.expect[0]
	ss.dropExpectLocked(1)
	switch e.kind {
	case expParse:
		if e.key != "" {
			u.stmts.confirm(e.key)
		}
		return true, '1'
	case expParseInjected:
		if e.key != "" {
			u.stmts.confirm(e.key)
		}
		return false, 0
	case expParseCached:
		return true, '1'
	case expClose:
		return true, '3'
	case expCloseInjected:
		return false, 0
	}
	ss.log.Warn("completion does not match the expected message", zap.String("type", string(typ)), zap.Int("expected", int(e.kind)))
	return true, typ
}

// dropSkippedLocked handles an ErrorResponse: in the extended protocol the
// server skips every message up to the next Sync, so their expectations go
// (and statements whose Parse was skipped or failed are not prepared).
func (ss *session) dropSkippedLocked(u *upstream) {
	if len(ss.expect) > 0 && (ss.expect[0].kind == expQuery || ss.expect[0].kind == expQueryInjected) {
		return // simple query: its ReadyForQuery still comes
	}
	i := ss.skipToEndLocked(u)
	ss.upSkipping = i == len(ss.expect) // the Sync ending the skip is still to come
	ss.dropExpectLocked(i)
}

// dropExpectLocked removes the first n expectations. The rest move to the
// front of the queue's array, which stays the session's: slicing the front
// off would shrink the capacity until every request appended to a new
// array. The queue is short (the messages of one pipeline). Called with
// ss.mu held.
func (ss *session) dropExpectLocked(n int) {
	k := copy(ss.expect, ss.expect[n:])
	clear(ss.expect[k:]) // no references kept past the end
	ss.expect = ss.expect[:k]
}

// skipToEndLocked records that the server failed or skipped the messages
// queued before the first request end (Sync, Query), and returns that
// end's index (len(ss.expect) when none is queued).
func (ss *session) skipToEndLocked(u *upstream) int {
	i := 0
	for i < len(ss.expect) && !ss.expect[i].kind.ends() {
		i++
	}
	forgetSkipped(u, ss.expect[:i])
	for _, e := range ss.expect[:i] {
		if e.client.def != nil {
			ss.failedParses = append(ss.failedParses, e.client)
			ss.parseFailed.Store(true)
		}
		if e.kind == expDescribeInjected {
			ss.describeEndedLocked(e)
		}
	}
	return i
}

// forgetFailedParses forgets the client statements whose Parse the server
// failed or skipped, as Postgres keeps no statement for a failed Parse (a
// later Parse of the name must not get 42P05). Session goroutine only.
func (ss *session) forgetFailedParses() {
	ss.mu.Lock()
	failed := ss.failedParses
	ss.failedParses = nil
	ss.parseFailed.Store(false)
	ss.mu.Unlock()
	for _, cp := range failed {
		if cp.name == "" {
			if ss.unnamed == cp.def {
				ss.unnamed = nil
			}
		} else if ss.stmts[cp.name] == cp.def {
			delete(ss.stmts, cp.name)
		}
	}
}

// heldParse is a client Parse the sidecar has not answered yet (see
// forwardMessage): the request's next message decides whether the server
// answers it or the sidecar does.
type heldParse struct {
	pm  parseMsg
	a   *analysis
	def *stmtDef // what define recorded for it
}

// takeHeld returns a ParseComplete for every held Parse followed by
// msgs, and forgets the held Parses: the sidecar answers them. Session
// goroutine only.
func (ss *session) takeHeld(msgs ...pgproto3.BackendMessage) []pgproto3.BackendMessage {
	if len(ss.held) == 0 {
		return msgs
	}
	out := make([]pgproto3.BackendMessage, 0, len(ss.held)+len(msgs))
	for range ss.held {
		out = append(out, &pgproto3.ParseComplete{})
	}
	ss.held = ss.held[:0]
	return append(out, msgs...)
}

// errDuplicateStatement is Postgres's error for a Parse of a name in use.
func errDuplicateStatement(name string) *pgerr.Error {
	return pgerr.Errorf(pgerr.DuplicatePrepared, "prepared statement \"%s\" already exists", name)
}

// checkParse returns the error Postgres would answer a Parse with that the
// sidecar can tell without a server: a name already in use (42P05), or a
// syntax error (42601, worded and positioned as Postgres words it, by the
// same parser). Other errors (an unknown table) need a server.
// Session goroutine only.
func (ss *session) checkParse(pm parseMsg) *pgerr.Error {
	if pm.name != "" && ss.stmts[pm.name] != nil {
		return errDuplicateStatement(pm.name)
	}
	kept := pm.query == ss.lastParse // forwardMessage kept the text (most often the very string)
	if kept && ss.lastParseOK {
		return nil
	}
	ss.mu.Lock()
	scs := ss.want["standard_conforming_strings"]
	ss.mu.Unlock()
	if scs != "" && scs != "on" {
		return nil // the parser lexes strings as standard_conforming_strings=on does
	}
	e := ss.srv.analyzer.syntaxError(pm.query)
	ss.lastParseOK = kept && e == nil
	return e
}

// failLocal answers a request the sidecar refuses without a server: the
// Parses held before it, then e; the rest of the request is skipped up to
// its Sync, answered with ReadyForQuery status, as the server does after
// an error. Session goroutine only.
func (ss *session) failLocal(e *pgerr.Error, status byte) error {
	ss.skipStatus = status
	ss.srv.metrics.Errors.WithLabelValues("sidecar", e.Code.Class()).Inc()
	return ss.cw.send(false, ss.takeHeld(e.Response())...)
}

// answerUnsent answers a request that never reached a server with e (an
// ERROR): 57014 when the client cancelled its wait for a connection, as
// Postgres answers a cancelled statement, or 08006 when its shard found no
// primary within FAILOVER_WAIT. The rest of an extended-protocol request
// is skipped up to its Sync. Session goroutine only.
func (ss *session) answerUnsent(typ byte, e *pgerr.Error) error {
	if typ == 'Q' || typ == 'F' || typ == 'S' {
		ss.srv.metrics.Errors.WithLabelValues("sidecar", e.Code.Class()).Inc()
		return ss.cw.send(true, ss.takeHeld(e.Response(), &pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	}
	return ss.failLocal(e, 'I')
}

// skipToSync consumes the messages of a request the sidecar refused, up
// to its Sync. Session goroutine only.
func (ss *session) skipToSync(typ byte) error {
	switch typ {
	case 'S':
		status := ss.skipStatus
		ss.skipStatus = 0
		return ss.cw.send(true, &pgproto3.ReadyForQuery{TxStatus: status})
	case 'H':
		return ss.cw.send(true)
	}
	return nil // the reader discards the body
}

// deallocate handles SQL DEALLOCATE of the client's protocol-level
// statements: they exist under sidecar names shared with other clients,
// so the sidecar forgets the client's names and answers itself, leaving
// the server's statements to the other clients (as PgBouncer does).
// DEALLOCATE of a name the client prepared with SQL PREPARE, and DEALLOCATE
// ALL in a session that used SQL PREPARE, go to the server. It reports
// whether it answered. Session goroutine only.
func (ss *session) deallocate(a *analysis) (bool, error) {
	ss.mu.Lock()
	quiet := ss.up == nil && len(ss.deferred) == 0 || ss.up != nil && ss.quietLocked() && ss.txStatus != 'E'
	status := byte('I')
	if ss.up != nil {
		status = ss.txStatus
	}
	sqlPrepared := ss.pins[PinSQLPrepare]
	ss.mu.Unlock()
	if !quiet {
		return false, nil
	}
	tag := "DEALLOCATE"
	switch {
	case a.deallocateAll:
		ss.stmts = map[string]*stmtDef{} // the unnamed statement stays, as in Postgres
		if sqlPrepared {
			return false, nil // the server drops the SQL-level ones
		}
		tag = "DEALLOCATE ALL"
	case ss.stmts[a.deallocate] != nil:
		delete(ss.stmts, a.deallocate)
	default:
		return false, nil
	}
	ss.unnamed = nil // a simple Query drops the unnamed statement
	return true, ss.cw.send(true, ss.takeHeld(&pgproto3.CommandComplete{CommandTag: []byte(tag)}, &pgproto3.ReadyForQuery{TxStatus: status})...)
}

// forgetSkipped records that the Parses among exps did not prepare their
// statements on u: the server failed or skipped them after an error.
func forgetSkipped(u *upstream, exps []expectation) {
	for _, e := range exps {
		if e.kind == expParse || e.kind == expParseInjected {
			if e.key != "" {
				u.stmts.forget(e.key)
			} else {
				u.unnamed = nil
			}
		}
	}
}

// readyForQuery handles a ReadyForQuery: bookkeeping, settling session
// state at idle points, forwarding, and detaching in transaction mode. It
// reports whether the relay goroutine must stop and, when it need not,
// whether no request of the session awaits its answer any more (quiet,
// as of the ReadyForQuery's forwarding) and then the connection's
// quietSeq as of that moment, for the next wait to skip its read
// (quiet.go): read before the client can see the ReadyForQuery and send
// its next request, whose write would make quietSeq its own.
func (ss *session) readyForQuery(c *pool.Conn[*upstream], status byte) (stop, quiet bool, skipSeq uint64) {
	u := c.Value
	ss.mu.Lock()
	ss.txStatus, u.txStatus = status, status
	// Anything queued before the request's end was skipped: an error the
	// server raised before the rest of the request arrived (a
	// statement_timeout between Parse and Describe) made it ignore
	// everything up to the Sync.
	var now time.Time // read once, for the answer's duration and the release
	if i := ss.skipToEndLocked(u); i < len(ss.expect) {
		if at := ss.expect[i].at; !at.IsZero() && u.duration != nil {
			now = time.Now()
			u.duration.Observe(now.Sub(at).Seconds())
			u.noteAnswer(now)
		}
		ss.dropExpectLocked(i + 1)
	} else {
		ss.dropExpectLocked(len(ss.expect))
	}
	if ss.pending > 0 {
		ss.pending--
	}
	if ss.pending == 0 {
		ss.disarmLocked(c)
		if ss.preRead.Load() {
			ss.readAheadDoneLocked()
		}
	}
	ss.cond.Broadcast() // a session goroutine may wait for the requests in flight
	if ss.pending == 0 {
		// A cancel being delivered for the request that just ended holds
		// the backend (and the client's ReadyForQuery) until it is
		// delivered or dropped.
		ss.waitCancelsLocked()
	}
	if status == 'I' && ss.txWrote != "" && ss.pending == 0 {
		ss.wroteLocked(ss.txWrote, time.Now())
		ss.txWrote = ""
	}
	if status == 'I' && ss.pending == 0 {
		ss.txBegin, ss.txReplay, ss.txMovable = nil, nil, false
		if ss.ddlSent {
			ss.ddlSent = false
			ss.srv.schemaChanged()
		}
	}
	idle := ss.pending == 0 && ss.synced && !ss.copyIn && status == 'I'
	if ss.resetting {
		if idle {
			ss.resetDone = !ss.resetFailed
			ss.mu.Unlock()
			if !ss.resetDone {
				ss.log.Warn("upstream reset failed; destroying connection")
			}
			return true, false, 0
		}
		ss.mu.Unlock()
		return false, false, 0
	}
	var d dirtyState
	if idle && ss.dirty.any() && !ss.ended {
		d, ss.dirty = ss.dirty, dirtyState{}
		ss.internal = true
	}
	if d.any() {
		ss.mu.Unlock()
		err := ss.settle(u, d)
		ss.mu.Lock()
		ss.internal = false
		ss.cond.Broadcast()
		if err != nil {
			ss.mu.Unlock()
			ss.upstreamLost(u, fmt.Errorf("restoring session settings: %w", err))
			return true, false, 0
		}
	}
	if !ss.discard.Load() {
		_ = ss.reportParamsLocked(u)
	}

	// Decide about detaching before the client sees ReadyForQuery: once it
	// does, its next message must find the session detached (transaction
	// mode) so it queues for a connection like everyone else. The client
	// writer is taken before the session lock is released, so the
	// ReadyForQuery reaches the client before anything a next attachment
	// relays.
	idle = idle && ss.pending == 0 && ss.synced && !ss.copyIn && ss.txStatus == 'I' && !ss.internal && !ss.resetting
	detach := idle && ss.transactionMode() && len(ss.pins) == 0 && !ss.ended && !ss.draining
	terminate := idle && ss.draining && !ss.ended
	if detach {
		ss.up = nil
	}
	if status == 'I' && len(ss.deferred) > 0 {
		status = ss.deferredStatusLocked() // the client is in the transaction the sidecar deferred
	}
	quiet = ss.pending == 0
	if quiet && u.qr != nil {
		skipSeq = u.quietSeq.Load()
	}
	ss.cw.mu.Lock()
	ss.mu.Unlock()
	discard := ss.discard.Load()
	if !discard {
		ss.cw.relayed += len(ss.cw.rfq)
	}
	ss.cw.countRelayedLocked(ss.srv.metrics.ToClient) // before the client can see the end of its request
	if !discard {
		if err := ss.cw.writeReadyLocked(status, u.r.Buffered() == 0 || detach); err != nil {
			ss.discard.Store(true)
		}
	}
	ss.cw.mu.Unlock()
	switch {
	case detach:
		if now.IsZero() { // no duration was observed
			now = time.Now()
		}
		c.ReleaseAt(now)
		return true, false, 0
	case terminate:
		ss.terminate(errShutdown)
	}
	return false, quiet, skipSeq
}

// forward writes one upstream message to the client, flushing when no
// more upstream data is buffered.
func (ss *session) forward(typ byte, n int, body []byte, u *upstream, stream bool) error {
	w := &ss.cw
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(wire.AppendHeader(ss.rhdr[:0], typ, n)); err != nil {
		return err
	}
	var err error
	switch {
	case stream:
		err = u.r.CopyBody(&w.w)
	case typ == '1' || typ == '3':
		// completions may be retyped; they have no body
	default:
		_, err = w.w.Write(body)
	}
	if err != nil {
		return err
	}
	if w.relayed += n + 5; w.relayed >= maxUncounted {
		w.countRelayedLocked(ss.srv.metrics.ToClient)
	}
	if u.r.Buffered() == 0 {
		return w.w.Flush()
	}
	return nil
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// idleOnLocked reports whether the session is attached to c with nothing
// in flight on it: between requests, outside any transaction, not in COPY,
// no internal query or reset running and no cancel being delivered.
// Called with ss.mu held.
func (ss *session) idleOnLocked(c *pool.Conn[*upstream]) bool {
	return ss.up == c && ss.pending == 0 && ss.synced && !ss.copyIn && ss.txStatus == 'I' &&
		len(ss.expect) == 0 && !ss.internal && !ss.resetting && !ss.ended &&
		ss.cancelHold == 0 && !ss.fanning && !ss.crossing
}

// idleOn is idleOnLocked taking ss.mu.
func (ss *session) idleOn(c *pool.Conn[*upstream]) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.idleOnLocked(c)
}

// backendStateLocked reports whether the session has state that lives
// only on its backends, a pin reason: temporary tables, session advisory
// locks, LISTEN, WITH HOLD cursors, SQL PREPARE, set_config with a
// computed name. Such a session cannot move to a new connection
// unnoticed. (Settings are replayed on any new connection, and protocol
// prepared statements prepared again: see reprepare.) Called with ss.mu
// held.
func (ss *session) backendStateLocked() bool {
	for r := range ss.pins {
		if r != PinSessionMode {
			return true
		}
	}
	return false
}

// holdIdleFatal keeps back a FATAL error the server sent while the session
// was idle on the connection (pg_terminate_backend, a shutdown): the loss
// that follows decides whether the client hears it (see upstreamDied). It
// reports whether the error was held. Relay goroutine only.
func (ss *session) holdIdleFatal(body []byte) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.up == nil || !ss.idleOnLocked(ss.up) {
		return false
	}
	ss.idleFatal = append([]byte(nil), body...)
	return true
}

// upstreamDied handles the failure of a read from c, the session's
// attached upstream. A death touches only what was running on it: when the
// session was idle on c and keeps no state there (backendStateLocked), c
// is detached and destroyed without a word to the client, whose next
// statement takes a new connection (settings are replayed and statements
// re-prepared there, as for any new attachment). Otherwise the session
// ends with one error (upstreamLost). Relay goroutine only; it owns c.
func (ss *session) upstreamDied(c *pool.Conn[*upstream], err error) {
	u := c.Value
	ss.mu.Lock()
	if ss.parking {
		// The session goroutine is detaching c (stopRelayLocked): it finds
		// c broken and destroys it.
		ss.upGone = true
		ss.mu.Unlock()
		return
	}
	if ss.retryLostLocked(c, err) || ss.finishLostLocked(c, err) {
		return
	}
	if !ss.idleOnLocked(c) || ss.backendStateLocked() || ss.draining {
		silent := ss.idleFatal == nil && !ss.fatalSeen.Load() && !ss.ended && !ss.resetting
		ss.mu.Unlock()
		if silent {
			// No FATAL for this backend alone (pg_terminate_backend): the
			// server went away, or is going. The pool's idle connections
			// to it would pass the liveness check for the moment the
			// kernel takes to close them, so they go before the client
			// hears of the loss and sends its next statement.
			ss.srv.hostDown(u.target.Host.Addr)
		}
		ss.upstreamLost(u, err)
		return
	}
	ss.detachLostLocked(c, err, "replaced", "idle upstream connection lost; the session goes on with a new one")
}

// detachLostLocked detaches and destroys c, the session's upstream, which
// died while the session can go on without it, and counts the loss under
// outcome and logs msg, with the server's FATAL held back meanwhile (if
// any). Called by the relay goroutine with ss.mu held; returns with it
// released.
func (ss *session) detachLostLocked(c *pool.Conn[*upstream], err error, outcome, msg string) {
	held := ss.detachLocked(c)
	ss.mu.Unlock()
	ss.destroyLost(c, err, outcome, msg, held)
}

// detachLocked detaches c, the session's upstream, which died, and
// returns the server's FATAL held back meanwhile (if any); the session's
// next statement takes a new connection. Called with ss.mu held.
func (ss *session) detachLocked(c *pool.Conn[*upstream]) (held []byte) {
	held = ss.idleFatal
	ss.idleFatal = nil
	ss.up = nil
	ss.lostUp = c.Value
	ss.checkNext = true // the pool's idle connections to that host may be dead too
	ss.cond.Broadcast()
	return held
}

// destroyLost destroys c, detached by detachLocked, counts its loss under
// outcome and logs msg with held, the server's FATAL held back (if any).
// Called without ss.mu.
func (ss *session) destroyLost(c *pool.Conn[*upstream], err error, outcome, msg string, held []byte) {
	u := c.Value
	c.Destroy()
	ss.srv.metrics.UpstreamsLost.WithLabelValues(u.target.Shard, u.target.Role.String(), outcome).Inc()
	fields := []zap.Field{zap.String("shard", u.target.Shard), zap.String("addr", u.target.Host.Addr),
		zap.Uint32("backend_pid", u.pid), zap.Error(err)}
	if held != nil {
		fields = append(fields, zap.String("server_error", errorField(held, 'M')))
	}
	ss.log.Info(msg, fields...)
}

// upstreamLost handles an upstream read failure. If the session did not
// cause it (by closing the upstream after the client left), the client gets
// FATAL 08006 and its connection is closed.
func (ss *session) upstreamLost(u *upstream, err error) {
	ss.mu.Lock()
	expected := ss.resetting || ss.ended
	ss.ended = true
	ss.upGone = true
	ss.internal = false
	ss.cond.Broadcast()
	ss.mu.Unlock()
	if expected {
		return
	}
	ss.reportLost(u, err)
	ss.closeClient()
}

// reportLost gives the client exactly one error for the loss of upstream
// u, as Postgres gives one when its backend goes away: nothing more when
// the server's own FATAL (57P01 after pg_terminate_backend, a shutdown)
// already reached the client, else the sidecar's FATAL 08006. Only the
// first call reports.
func (ss *session) reportLost(u *upstream, err error) {
	if !ss.lostReported.CompareAndSwap(false, true) {
		return
	}
	ss.srv.metrics.UpstreamsLost.WithLabelValues(u.target.Shard, u.target.Role.String(), "session_ended").Inc()
	ss.mu.Lock()
	held := ss.idleFatal
	ss.idleFatal = nil
	ss.mu.Unlock()
	if held != nil {
		// The server's FATAL, held back while the session was idle, is the
		// one error the client gets.
		ss.log.Info("upstream connection ended by the server", zap.String("shard", u.target.Shard), zap.Uint32("backend_pid", u.pid), zap.Error(err))
		if !ss.discard.Load() {
			var er pgproto3.ErrorResponse
			if er.Decode(held) == nil {
				_ = ss.cw.send(true, &er)
				return
			}
		} else {
			return
		}
	}
	if ss.fatalSeen.Load() {
		ss.log.Info("upstream connection ended by the server", zap.String("shard", u.target.Shard), zap.Uint32("backend_pid", u.pid), zap.Error(err))
		return
	}
	e := ss.lostError(u, err)
	ss.srv.metrics.Errors.WithLabelValues("sidecar", e.Code.Class()).Inc()
	if !ss.discard.Load() {
		_ = ss.cw.sendError(e)
	}
}

// lostError logs the loss of upstream u and returns the FATAL 08006 the
// client gets for it.
func (ss *session) lostError(u *upstream, err error) *pgerr.Error {
	ss.log.Warn("upstream connection lost", zap.String("shard", u.target.Shard), zap.Uint32("backend_pid", u.pid), zap.Error(err))
	e := pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream %s lost", u.target)
	e.Detail = err.Error()
	return e
}

// finish runs when the client side has ended. It is the only place that
// gives an attached connection back: after a clean reset (ROLLBACK if
// needed, then the reset query for pinned sessions) it is released; in any
// doubt it is destroyed.
func (ss *session) finish(cause error) {
	ss.discard.Store(true)
	defer ss.releaseParked()
	ss.mu.Lock()
	c := ss.up
	if c == nil {
		ss.ended = true
		ss.unpinMetricLocked()
		ss.mu.Unlock()
		_ = ss.client.Close()
		ss.log.Debug("session ended", zap.Error(cause))
		return
	}
	u := c.Value
	lost := ss.upGone
	safe := ss.pending == 0 && ss.synced && !ss.copyIn && !lost && !ss.internal && !errors.Is(cause, errUpstreamWrite)
	running := ss.pending > 0
	pinned := len(ss.pins) > 0
	var reset []string
	discardAll := false
	if safe {
		if ss.txStatus != 'I' {
			reset = append(reset, "ROLLBACK")
		}
		if q := ss.srv.cfg.Pool.ResetQuery; q != "" && pinned {
			reset = append(reset, q)
			discardAll = true
		}
		if len(reset) == 0 {
			reset = append(reset, "") // an empty query: one round trip to stop the relay cleanly
		}
		ss.resetting = true
		ss.pending += len(reset)
		for range reset {
			ss.expect = append(ss.expect, expectation{kind: expQuery})
		}
		ss.synced = true
	}
	ss.ended = true
	ss.unpinMetricLocked()
	done := ss.relayDoneLocked()
	ss.mu.Unlock()
	_ = ss.client.Close()

	if safe {
		if err := sendQueries(&ss.uw, u, reset); err == nil {
			select {
			case <-done:
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
	case <-done:
	default:
		_ = u.conn.Close()
		<-done
	}
	ss.mu.Lock()
	ss.waitCancelsLocked()
	clean := ss.resetDone
	if clean && discardAll {
		u.stmts.clear()
		u.unnamed = nil
		u.applied, u.appliedTag = map[string]string{}, nil
	}
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

// sendQueries writes simple queries (used for reset) through w and
// flushes.
func sendQueries(w interface {
	Write([]byte) (int, error)
	Flush() error
}, u *upstream, qs []string) error {
	_ = u.conn.SetWriteDeadline(time.Now().Add(time.Second))
	defer u.conn.SetWriteDeadline(time.Time{})
	u.unnamed = nil // a simple Query drops the server's unnamed statement
	for _, q := range qs {
		if _, err := w.Write(wire.AppendQuery(nil, q)); err != nil {
			return err
		}
	}
	return w.Flush()
}

// drain marks the session for shutdown; an idle session is terminated at
// once, a busy one when it next becomes idle.
func (ss *session) drain() {
	ss.mu.Lock()
	ss.draining = true
	idle := !ss.resetting && !ss.fanning && !ss.crossing && (ss.up == nil || (ss.pending == 0 && ss.synced && !ss.copyIn && ss.txStatus == 'I'))
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
	ss.cond.Broadcast()
	ss.mu.Unlock()
	ss.srv.metrics.Errors.WithLabelValues("sidecar", e.Code.Class()).Inc()
	if !ss.discard.Load() {
		_ = ss.cw.sendError(e)
	}
	ss.closeClient()
}

// errorField returns the value of field f of an ErrorResponse body
// without decoding the rest, or "".
func errorField(body []byte, f byte) string { return wire.ErrorField(body, f) }

// staleStatementError reports whether an upstream error is one that only
// a schema change since a statement was prepared causes: "cached plan
// must not change result type" (0A000) and "cache lookup failed for
// type" (XX000, a parameter of a dropped type). The schema changed
// without the sidecar seeing it (DDL from another connection), so a new
// schema generation starts.
func staleStatementError(body []byte) bool {
	switch errorField(body, 'C') {
	case "0A000":
		return strings.HasPrefix(errorField(body, 'M'), "cached plan must not change result type")
	case "XX000":
		return strings.HasPrefix(errorField(body, 'M'), "cache lookup failed for")
	}
	return false
}

// fatalError reports whether an ErrorResponse ends the server's session
// (severity FATAL or PANIC).
func fatalError(body []byte) bool {
	sev := errorField(body, 'V')
	if sev == "" {
		sev = errorField(body, 'S')
	}
	return sev == "FATAL" || sev == "PANIC"
}

// errorClass extracts the SQLSTATE class from an ErrorResponse body without
// decoding the rest.
func errorClass(body []byte) string { return wire.ErrorClass(body) }

func errClass(err error) string {
	return pgerr.From(err).Code.Class()
}
