package proxy

import (
	"errors"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

// A client transaction that needs a second shard becomes a crossTx (a
// fanout.Tx): from then until it ends, the session goroutine serves it
// synchronously, each request (a Query, or the messages from a Bind up to
// Sync) run as a fanout.Request over the transaction's legs, without the
// relay goroutine. This file is the session's side: when a transaction
// becomes one, the messages the session answers itself, and giving the
// legs back when it ends.
//
// A transaction that so far ran only reads of nothing or of replicated
// tables at READ COMMITTED is not made a crossTx: it moves to the shard
// its next statement needs (relocateLocked), so a request that starts
// with a user lookup and then works on one team stays on one connection.

// recordTxStmt keeps a statement that succeeded on every leg for legs opened
// later: a local setting or a SAVEPOINT is appended; RELEASE drops the
// savepoint and those after it (their settings stay); ROLLBACK TO drops
// everything after the savepoint.
func recordTxStmt(list []txStmt, a *analysis, sql string) []txStmt {
	last := func(name string) int {
		for i := len(list) - 1; i >= 0; i-- {
			if name != "" && list[i].Savepoint == name {
				return i
			}
		}
		return -1
	}
	switch {
	case a.tx == txSavepoint:
		return append(list, txStmt{Savepoint: a.savepoint, SQL: sql})
	case a.tx == txRelease:
		if i := last(a.savepoint); i >= 0 {
			kept := list[:i:i]
			for _, s := range list[i:] {
				if s.Savepoint == "" {
					kept = append(kept, s)
				}
			}
			return kept
		}
	case a.tx == txRollbackTo:
		if i := last(a.savepoint); i >= 0 {
			return list[:i+1]
		}
	case a.local:
		return append(list, txStmt{SQL: sql})
	}
	return list
}

// errNeedCrossTx is moveToLocked's answer when the session's transaction
// must span shards to serve the message.
var errNeedCrossTx = errors.New("transaction needs another shard")

// inTransactionLocked reports whether the client is inside a transaction
// block (the sidecar's deferred BEGIN included). Called with ss.mu held.
func (ss *session) inTransactionLocked() bool {
	return len(ss.deferred) > 0 || (ss.up != nil && ss.txStatus != 'I')
}

// waitQuietLocked waits until nothing is in flight on the session's
// upstream. It returns with ss.mu held. Called with ss.mu held.
func (ss *session) waitQuietLocked() error {
	for {
		for ss.internal {
			ss.waitLocked()
		}
		if ss.ended {
			return errSessionEnded
		}
		if ss.up == nil || ss.quietLocked() {
			return nil
		}
		if ss.pending > 0 && ss.synced && !ss.copyIn || len(ss.expect) > 0 {
			ss.waitLocked()
			continue
		}
		return nil
	}
}

// relocateLocked moves a transaction that has only read nothing or
// replicated tables (at READ COMMITTED, where every statement takes a
// fresh snapshot) off its upstream: it is rolled back there and its BEGIN
// deferred again, to be replayed on the upstream of the next statement.
// Called with ss.mu held and the session quiet.
func (ss *session) relocateLocked() error {
	c := ss.stopRelayLocked()
	if c == nil {
		return pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream lost")
	}
	ss.mu.Unlock()
	err := c.Value.exec("ROLLBACK", nil)
	ss.mu.Lock()
	if err != nil || c.Value.txStatus != 'I' {
		c.Destroy()
		if err == nil {
			err = pgerr.Errorf(pgerr.InternalError, "ROLLBACK left the connection in a transaction")
		}
		return err
	}
	ss.keepLocked(c)
	ss.deferred = slices.Clone(ss.txBegin)
	if len(ss.deferred) == 0 {
		ss.deferred = []string{"BEGIN"}
	}
	ss.txStatus, ss.txMovable = 'I', false
	ss.srv.metrics.CrossShardTx.WithLabelValues("moved", "1").Inc()
	return nil
}

// enterCrossLocked makes the session's transaction a crossTx: the
// upstream it runs on (if it started on one) becomes its first leg.
// Called with ss.mu held, inside a transaction, with nothing in flight.
func (ss *session) enterCrossLocked() error {
	begin, replay := slices.Clone(ss.txBegin), slices.Clone(ss.txReplay)
	if len(ss.deferred) > 0 {
		begin, replay = ss.deferred, nil
		ss.deferred = nil
	}
	xt := fanout.NewTx(ss.fanEnv(), begin, replay)
	if ss.up != nil {
		wrote := ss.txWrote
		c := ss.stopRelayLocked()
		if c == nil {
			return pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream lost")
		}
		shard := c.Value.target.Shard
		switch {
		case c.Value.txStatus == 'I':
			// The session's own connection (session mode) while its BEGIN
			// is still deferred: not in the transaction, it stays the
			// session's, and becomes a leg when opened as one.
			ss.keepLocked(c)
		case c.Value.target.Role != router.Primary:
			// A read-only transaction on a replica: it joins the shard's
			// primary instead (its snapshot so far is the replica's).
			ss.mu.Unlock()
			err := c.Value.exec("ROLLBACK", nil)
			ss.mu.Lock()
			if err != nil {
				c.Destroy()
				return err
			}
			ss.keepLocked(c)
		default:
			xt.Join(ss.legConn(c), wrote == shard)
		}
	}
	ss.txWrote = ""
	ss.txStatus = xt.Status()
	ss.xt, ss.crossing = xt, true
	return nil
}

// crossShards says which shards of the transaction a routed statement
// needs, and the plan to run it with: its own shards, or for a statement
// that may run anywhere the first leg's (a shard is opened only when the
// transaction has none).
func (ss *session) crossShards(r routeResult) ([]string, *fanPlan) {
	xt := ss.xt
	if r.fan != nil {
		p := *r.fan
		return r.fan.Shards(), &p
	}
	plan := &fanPlan{ReadOnly: r.readOnly || r.noData}
	if legs := xt.Shards(); (r.anyShard || r.noData) && len(legs) > 0 {
		return legs[:1], plan
	}
	return []string{r.target.Shard}, plan
}

// crossMessage serves one client message of a transaction spanning
// shards (outside an extended-protocol request, which fanOut.message
// serves).
func (ss *session) crossMessage(typ byte, n int) error {
	switch typ {
	case 'S':
		return ss.cw.send(true, &pgproto3.ReadyForQuery{TxStatus: ss.xt.Status()})
	case 'H':
		return ss.cw.send(true)
	case 'D', 'E':
		// Describe or Execute without a Bind first: on one leg.
		shards := ss.xt.Shards()
		if len(shards) == 0 {
			shards = []string{ss.preferredTarget().Shard}
		}
		f, err := ss.xt.Request(shards[:1], &fanPlan{ReadOnly: true})
		if err != nil {
			return ss.crossFailed(err)
		}
		ss.fan = f
		return ss.fanMessage(typ, n)
	}
	body, err := ss.boundedBody(typ, n)
	if err != nil {
		return err
	}
	switch typ {
	case 'P':
		if err := ss.defineFrom(body); err != nil {
			return err
		}
		return ss.cw.send(false, &pgproto3.ParseComplete{})
	case 'C':
		if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Close message")
		}
		if body[0] == 'S' {
			if err := ss.undefine(body); err != nil {
				return err
			}
		}
		return ss.cw.send(false, &pgproto3.CloseComplete{})
	case 'Q':
		var a *analysis
		if len(body) > 0 {
			a = ss.srv.analyzer.analyzeBytes(body[:len(body)-1])
		}
		return ss.crossQuery(n, body, a, nil)
	case 'B':
		return ss.crossBind(n, body, nil)
	}
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "message type %q is not supported inside a transaction spanning shards", typ)
	return ss.crossRefuse(e, typ == 'F')
}

// crossRefuse answers a request the transaction cannot run with e (and
// ReadyForQuery when the request ends here); the transaction fails, as a
// failed statement fails it in Postgres.
func (ss *session) crossRefuse(e *pgerr.Error, ready bool) error {
	ss.xt.Fail()
	ss.srv.metrics.RouteErrors.WithLabelValues(string(e.Code)).Inc()
	msgs := []pgproto3.BackendMessage{e.Response()}
	if ready {
		msgs = append(msgs, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	}
	return ss.cw.send(ready, msgs...)
}

// crossFailed ends the session after a failure that leaves the
// transaction's state unknown (a leg could not be opened or was lost).
func (ss *session) crossFailed(err error) error {
	ss.abandonCross()
	return ss.sessionError(err)
}

// crossQuery serves a simple Query inside a transaction spanning shards.
// r, when set, is the statement's route (already made on entering).
func (ss *session) crossQuery(n int, body []byte, a *analysis, r *routeResult) error {
	xt := ss.xt
	sql := ""
	if len(body) > 0 {
		sql = string(body[:len(body)-1])
	}
	if a == nil {
		a = noAnalysis
	}
	if isControl(a) {
		if _, err := ss.crossControl(a, sql); err != nil {
			return err
		}
		return ss.cw.send(true, &pgproto3.ReadyForQuery{TxStatus: ss.crossStatus()})
	}
	if xt.Failed() {
		return ss.cw.send(true, fanout.ErrInFailedTx.Response(), &pgproto3.ReadyForQuery{TxStatus: 'E'})
	}
	if r == nil {
		rr := ss.routeMessage('Q', n, body, false, a, false)
		r = &rr
	}
	if r.refuse != nil {
		return ss.crossRefuse(r.refuse, true)
	}
	shards, plan := ss.crossShards(*r)
	f, err := xt.Request(shards, plan)
	if err != nil {
		return ss.crossFailed(err)
	}
	f.Query(sql)
	return ss.endFanOut(ss.runFan(f, f.Run()))
}

// isControl reports whether a statement controls the transaction or its
// settings: it runs on every leg (or ends the transaction), not where a
// route sends it.
func isControl(a *analysis) bool {
	return a.twoPhase || a.tx != txNone || a.local || a.touchesState()
}

// crossStatus is the transaction status the client sees: the crossTx's,
// or idle once it ended.
func (ss *session) crossStatus() byte {
	if ss.xt == nil {
		return 'I'
	}
	return ss.xt.Status()
}

// crossControl runs a transaction-control or settings statement of a
// transaction spanning shards and answers the client with its
// CommandComplete or ErrorResponse (not ReadyForQuery). COMMIT and
// ROLLBACK end the transaction; savepoints and settings run on every leg
// and are kept for legs opened later; the client sees the first leg's
// answer. It reports whether the statement failed.
func (ss *session) crossControl(a *analysis, sql string) (failed bool, err error) {
	xt := ss.xt
	switch {
	case a.twoPhase:
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are not supported inside a transaction spanning shards")
		xt.Fail()
		ss.srv.metrics.Refused.WithLabelValues("two_phase_statement").Inc()
		return true, ss.cw.send(false, e.Response())
	case a.tx == txCommit:
		return ss.crossCommit()
	case a.tx == txRollback:
		return false, ss.crossRollback()
	case a.tx == txBegin:
		w := &pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "25001", Message: "there is already a transaction in progress"}
		return false, ss.cw.send(false, w, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")})
	case xt.Failed() && a.tx != txRollbackTo:
		return true, ss.cw.send(false, fanout.ErrInFailedTx.Response())
	}
	shards := xt.Shards()
	if len(shards) == 0 {
		shards = []string{ss.preferredTarget().Shard}
	}
	f, err := xt.Request(shards, &fanPlan{ReadOnly: true, Broadcast: true})
	if err != nil {
		return true, ss.crossFailed(err)
	}
	failed, err = f.Control(sql, a.tx == txRollbackTo, func(list []txStmt) []txStmt { return recordTxStmt(list, a, sql) })
	if err != nil {
		ss.destroyFan(f)
		return true, ss.endFanOut(ss.sessionError(err))
	}
	ss.mu.Lock()
	if a.touchesState() {
		ss.dirty.note(a)
	}
	ss.txStatus = xt.Status()
	ss.mu.Unlock()
	return failed, ss.endFanOut(nil)
}

// localReq is an extended-protocol request the sidecar answers itself, a
// Bind of a transaction-control statement as psycopg 3 sends BEGIN and
// COMMIT: BindComplete, NoData, the statement's answer at Execute,
// ReadyForQuery at Sync. Either the statement runs at Execute on every leg
// of a transaction spanning shards (a, sql), or its answer is known
// already (tag and status: a BEGIN the sidecar defers, the end of a
// transaction that ran nothing).
type localReq struct {
	a            *analysis
	sql          string
	tag          string
	status       byte
	done, failed bool
}

// localMessage serves one message of the local request, up to its Sync.
func (ss *session) localMessage(typ byte, n int) error {
	lr := ss.lreq
	if typ == 'B' && lr.tag != "" && lr.done && !lr.failed {
		// The next statement of a pipeline that began with a deferred
		// BEGIN: it runs as usual (the BEGIN is replayed before it) and
		// the upstream answers the Sync.
		ss.lreq = nil
		return ss.forwardMessage(typ, n)
	}
	var body []byte
	if typ != 'S' && typ != 'H' {
		var err error
		if body, err = ss.boundedBody(typ, n); err != nil {
			return err
		}
	}
	if lr.failed && typ != 'S' && typ != 'H' {
		return nil // skipped up to Sync, as the server does after an error
	}
	switch typ {
	case 'S':
		ss.lreq = nil
		status := ss.crossStatus()
		if lr.tag != "" {
			status = lr.status
		}
		return ss.cw.send(true, &pgproto3.ReadyForQuery{TxStatus: status})
	case 'H':
		return ss.cw.send(true)
	case 'D':
		if len(body) > 0 && body[0] == 'S' {
			return ss.cw.send(false, &pgproto3.ParameterDescription{}, &pgproto3.NoData{})
		}
		return ss.cw.send(false, &pgproto3.NoData{})
	case 'E':
		if lr.tag != "" {
			lr.done = true
			return ss.cw.send(false, &pgproto3.CommandComplete{CommandTag: []byte(lr.tag)})
		}
		if lr.done {
			return ss.cw.send(false, &pgproto3.CommandComplete{CommandTag: []byte(strings.ToUpper(strings.Fields(lr.sql + " x")[0]))})
		}
		lr.done = true
		failed, err := ss.crossControl(lr.a, lr.sql)
		lr.failed = failed
		return err
	case 'P':
		if err := ss.defineFrom(body); err != nil {
			return err
		}
		return ss.cw.send(false, &pgproto3.ParseComplete{})
	case 'C':
		if len(body) >= 2 && body[0] == 'S' {
			if err := ss.undefine(body); err != nil {
				return err
			}
		}
		return ss.cw.send(false, &pgproto3.CloseComplete{})
	case 'B':
		lr.failed = true
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "a transaction-control statement and another statement cannot share a pipeline in a transaction spanning shards")
		e.Hint = "send Sync between them"
		return ss.cw.send(false, e.Response())
	}
	return pgerr.Fatalf(pgerr.ProtocolViolation, "unexpected message type %q inside an extended-protocol request; send Sync first", typ)
}

// crossBind starts an extended-protocol request inside a transaction
// spanning shards with its Bind; the messages up to Sync join it. r,
// when set, is the Bind's route.
func (ss *session) crossBind(n int, body []byte, r *routeResult) error {
	if _, name, _, err := bindHeader(body); err == nil {
		if def := ss.stmtNamed(name); def != nil && def.a != nil && isControl(def.a) {
			ss.lreq = &localReq{a: def.a, sql: def.query}
			return ss.cw.send(false, &pgproto3.BindComplete{})
		}
	}
	if ss.xt.Failed() {
		// The server would skip everything up to Sync after the error.
		f, err := ss.xt.Request(nil, &fanPlan{ReadOnly: true})
		if err != nil {
			return ss.crossFailed(err)
		}
		f.Fail(fanout.ErrInFailedTx)
		ss.fan = f
		return nil
	}
	if r == nil {
		rr := ss.routeMessage('B', n, body, true, nil, false)
		r = &rr
	}
	shards, plan := ss.crossShards(*r)
	if r.refuse != nil {
		shards = nil
	}
	f, err := ss.xt.Request(shards, plan)
	if err != nil {
		return ss.crossFailed(err)
	}
	ss.fan = f
	if r.refuse != nil {
		ss.srv.metrics.RouteErrors.WithLabelValues(string(r.refuse.Code)).Inc()
		f.Fail(r.refuse)
		return nil
	}
	return f.Bind(n, body, plan, ss.bindStmt(body))
}

// crossCommit commits a transaction spanning shards (see Tx.Commit) and
// answers the client with COMMIT or the error (not ReadyForQuery), then
// gives the legs back.
func (ss *session) crossCommit() (failed bool, err error) {
	failed, err = ss.xt.Commit()
	if err != nil {
		return true, ss.endFanOut(ss.crossFailed(err))
	}
	ss.exitCross()
	return failed, ss.endFanOut(nil)
}

// crossRollback rolls the transaction back on every leg and answers the
// client with ROLLBACK (not ReadyForQuery), then gives the legs back.
func (ss *session) crossRollback() error {
	if err := ss.xt.Rollback(); err != nil {
		return ss.endFanOut(ss.crossFailed(err))
	}
	ss.exitCross()
	return ss.endFanOut(nil)
}

// exitCross gives the legs back after the transaction's end: settings the
// client changed are read back on each, then each goes to its pool (or
// stays parked for a session with state).
func (ss *session) exitCross() {
	legs := ss.xt.Conns()
	ss.mu.Lock()
	d := ss.dirty
	ss.dirty = dirtyState{}
	ss.mu.Unlock()
	for _, c := range legs {
		u := upstreamOf(c).Value
		if d.any() && u.txStatus == 'I' {
			if err := ss.settle(u, d); err != nil {
				u.txStatus = 'X' // destroyed below
			}
		}
	}
	if len(legs) > 0 {
		_ = ss.reportParams(upstreamOf(legs[0]).Value, false)
	}
	ss.mu.Lock()
	for _, c := range legs {
		if c.TxStatus() == 'I' {
			ss.keepLocked(upstreamOf(c))
		} else {
			c.Destroy()
		}
	}
	ss.xt, ss.crossing = nil, false
	ss.txStatus, ss.txBegin, ss.txReplay = 'I', nil, nil
	ss.mu.Unlock()
}

// abandonCross rolls back every leg of a transaction the client left, or
// that cannot go on (see Tx.Abandon).
func (ss *session) abandonCross() {
	xt := ss.xt
	if xt == nil {
		return
	}
	xt.Abandon(ss.srv.cfg.Pool.ResetTimeout)
	ss.mu.Lock()
	ss.xt, ss.crossing = nil, false
	ss.txStatus, ss.txBegin, ss.txReplay = 'I', nil, nil
	ss.mu.Unlock()
}

// noteTxStatementLocked keeps what a statement sent on the session's one
// upstream means for its transaction should it later span shards: a
// BEGIN sent as it is starts txBegin, local settings and savepoints join
// txReplay, and any statement but a read of nothing or of replicated
// tables pins the transaction to its shard. Called with ss.mu held.
func (ss *session) noteTxStatementLocked(typ byte, body []byte, a *analysis, r routeResult) {
	if !r.movable() {
		ss.txMovable = false
	}
	var sql string
	switch {
	case typ == 'Q' && len(body) > 0:
		if a == nil || !keptInTx(a) {
			return // not recorded: no copy of the text
		}
		sql = string(body[:len(body)-1])
	case typ == 'B':
		// psycopg 3 sends BEGIN, COMMIT and SAVEPOINT with the extended
		// protocol.
		_, name, _, err := bindHeader(body)
		def := ss.stmtNamed(name)
		if err != nil || def == nil {
			return
		}
		a, sql = def.a, def.query
	}
	if a == nil || sql == "" {
		return
	}
	switch {
	case a.tx == txBegin:
		ss.readOnlyTx = a.txReadOnly
		ss.txBegin, ss.txReplay = []string{sql}, nil
		ss.txMovable = ss.readCommittedLocked(a.txSnapshot)
	case a.local || a.tx == txSavepoint || a.tx == txRelease || a.tx == txRollbackTo:
		ss.txReplay = recordTxStmt(ss.txReplay, a, sql)
	}
}

// keptInTx reports whether noteTxStatementLocked records a statement of
// analysis a: a BEGIN, a SET LOCAL, or a savepoint command.
func keptInTx(a *analysis) bool {
	return a.tx == txBegin || a.local || a.tx == txSavepoint || a.tx == txRelease || a.tx == txRollbackTo
}

// crossEntry serves the statement that made the transaction span shards
// (a Query or a Bind, already read and routed as r).
func (ss *session) crossEntry(typ byte, n int, body []byte, a *analysis, r routeResult) error {
	if typ == 'B' {
		return ss.crossBind(n, body, &r)
	}
	return ss.crossQuery(n, body, a, &r)
}

// eachShard runs a statement Postgres refuses inside a transaction block
// (VACUUM, CREATE INDEX CONCURRENTLY…) on every shard of plan, one after
// the other (see fanout.EachShard); only a simple query may.
func (ss *session) eachShard(typ byte, body []byte, plan *fanPlan) error {
	if typ != 'Q' {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "a statement that cannot run inside a transaction block runs on several shards only as a simple query")
		return ss.cw.send(false, e.Response())
	}
	return fanout.EachShard(ss.fanEnv(), string(body[:len(body)-1]), plan)
}
