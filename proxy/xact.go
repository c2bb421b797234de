package proxy

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// A client transaction that needs a second shard becomes a crossTx: from
// then until it ends, the session goroutine serves it synchronously, each
// request (a Query, or the messages from a Bind up to Sync) run as a
// fanOut over the transaction's legs (fanout.go), without the relay
// goroutine.
//
// A transaction that so far ran only reads of nothing or of replicated
// tables at READ COMMITTED is not made a crossTx: it moves to the shard
// its next statement needs (relocateLocked), so a request that starts
// with a user lookup and then works on one team stays on one connection.

// crossTx is a client transaction spanning shards: one leg (a connection
// inside the transaction) per shard its statements needed, opened as they
// need them. Owned by the session goroutine.
type crossTx struct {
	legs []*txLeg // in the order opened
	// begin opened the transaction (BEGIN with its options, hint-only SET
	// LOCALs); replay lists what ran since that a leg opened later must
	// also run (SET LOCAL, SET TRANSACTION, SAVEPOINT), in order.
	begin  []string
	replay []txStmt
	// failed: a statement failed; until ROLLBACK (or ROLLBACK TO a
	// savepoint) every statement gets 25P02, and COMMIT rolls back.
	failed bool
	start  time.Time
	// now is the transaction's brownie.now, set on its legs at its first
	// write to replicated tables (pintime.go); "" until then.
	now string
}

// txLeg is the transaction's connection to one shard's primary.
type txLeg struct {
	c     *pool.Conn[*upstream]
	shard string
	wrote bool // a statement that may write ran on it
	now   bool // brownie.now is set on it (pintime.go)
	// opening begins the transaction on the leg: sent ahead of its first
	// request, then "".
	opening string
}

// txStmt is a statement a leg opened later replays.
type txStmt struct {
	kind txKind // txSavepoint, or txNone for a local setting
	name string // the savepoint's name
	sql  string
}

// status is the transaction status the client sees.
func (xt *crossTx) status() byte {
	if xt.failed {
		return 'E'
	}
	return 'T'
}

// leg returns the transaction's leg on shard, or nil.
func (xt *crossTx) leg(shard string) *txLeg {
	for _, l := range xt.legs {
		if l.shard == shard {
			return l
		}
	}
	return nil
}

// shards names the shards the transaction has legs on, first opened
// first.
func (xt *crossTx) shards() []string {
	names := make([]string, len(xt.legs))
	for i, l := range xt.legs {
		names[i] = l.shard
	}
	return names
}

// record keeps a statement that succeeded on every leg for legs opened
// later: a local setting or a SAVEPOINT is appended; RELEASE drops the
// savepoint and those after it (their settings stay); ROLLBACK TO drops
// everything after the savepoint.
func recordTxStmt(list []txStmt, a *analysis, sql string) []txStmt {
	last := func(name string) int {
		for i := len(list) - 1; i >= 0; i-- {
			if list[i].kind == txSavepoint && list[i].name == name {
				return i
			}
		}
		return -1
	}
	switch {
	case a.tx == txSavepoint:
		return append(list, txStmt{kind: txSavepoint, name: a.savepoint, sql: sql})
	case a.tx == txRelease:
		if i := last(a.savepoint); i >= 0 {
			kept := list[:i:i]
			for _, s := range list[i:] {
				if s.kind != txSavepoint {
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
		return append(list, txStmt{sql: sql})
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
			ss.cond.Wait()
		}
		if ss.ended {
			return errSessionEnded
		}
		if ss.up == nil || ss.quietLocked() {
			return nil
		}
		if ss.pending > 0 && ss.synced && !ss.copyIn || len(ss.expect) > 0 {
			ss.cond.Wait()
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
	xt := &crossTx{begin: slices.Clone(ss.txBegin), replay: slices.Clone(ss.txReplay), start: time.Now()}
	if len(ss.deferred) > 0 {
		xt.begin, xt.replay = ss.deferred, nil
		ss.deferred = nil
	}
	if len(xt.begin) == 0 {
		xt.begin = []string{"BEGIN"}
	}
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
			xt.legs = append(xt.legs, &txLeg{c: c, shard: shard, wrote: wrote == shard})
			xt.failed = c.Value.txStatus == 'E'
		}
	}
	ss.txWrote = ""
	ss.txStatus = xt.status()
	ss.xt, ss.crossing = xt, true
	return nil
}

// openLeg adds a leg on shard to the transaction: a connection to the
// shard's primary with the client's settings. The statements that begin
// the transaction there as the client began it (BEGIN with its options,
// local settings, savepoints) are not run yet: crossRequest sends them
// ahead of the leg's first request, in the same write.
func (ss *session) openLeg(shard string) (*txLeg, error) {
	xt := ss.xt
	t, ok := ss.srv.primaryTarget(shard)
	if !ok {
		return nil, pgerr.Errorf(pgerr.ServerRejected, "shard %q is not in the shard map", shard)
	}
	c, err := ss.takeConn(t)
	if err != nil {
		return nil, err
	}
	q := slices.Clone(xt.begin)
	for _, s := range xt.replay {
		q = append(q, s.sql)
	}
	l := &txLeg{c: c, shard: shard, opening: strings.Join(q, ";\n")}
	xt.legs = append(xt.legs, l)
	return l, nil
}

// crossRequest prepares a request on the transaction's legs for shards
// (opened as needed, in map order), as a fanOut.
func (ss *session) crossRequest(shards []string, plan *fanPlan) (*fanOut, error) {
	xt := ss.xt
	f := &fanOut{ss: ss, plan: plan, xt: xt, start: time.Now()}
	for _, shard := range ss.srv.router.Map().ShardNames() {
		if !slices.Contains(shards, shard) {
			continue
		}
		l := xt.leg(shard)
		if l == nil {
			var err error
			if l, err = ss.openLeg(shard); err != nil {
				return nil, err
			}
		}
		fl := &fanLeg{c: l.c, u: l.c.Value, tx: l}
		if l.opening != "" {
			// The leg's transaction begins in the request's first write;
			// its answers are swallowed, and an error fails the leg.
			fl.out = wire.AppendQuery(fl.out, l.opening)
			fl.exp = append(fl.exp, expectation{kind: expQueryInjected})
			l.opening = ""
		}
		f.legs = append(f.legs, fl)
	}
	if len(f.legs) > 1 {
		ss.srv.metrics.FanOutShards.Observe(float64(len(f.legs)))
	}
	ss.mu.Lock()
	ss.fanning = true
	for _, l := range f.legs {
		ss.fanUps = append(ss.fanUps, l.u)
	}
	ss.mu.Unlock()
	return f, nil
}

// crossShards says which shards of the transaction a routed statement
// needs, and the plan to run it with: its own shards, or for a statement
// that may run anywhere the first leg's (a shard is opened only when the
// transaction has none).
func (ss *session) crossShards(r routeResult) ([]string, *fanPlan) {
	xt := ss.xt
	if r.fan != nil {
		var shards []string
		for _, t := range r.fan.targets {
			shards = append(shards, t.Shard)
		}
		p := *r.fan
		return shards, &p
	}
	plan := &fanPlan{readOnly: r.readOnly || r.noData}
	if (r.anyShard || r.noData) && len(xt.legs) > 0 {
		return []string{xt.legs[0].shard}, plan
	}
	return []string{r.target.Shard}, plan
}

// crossMessage serves one client message of a transaction spanning
// shards (outside an extended-protocol request, which fanOut.message
// serves).
func (ss *session) crossMessage(typ byte, n int) error {
	switch typ {
	case 'S':
		return ss.cw.send(true, &pgproto3.ReadyForQuery{TxStatus: ss.xt.status()})
	case 'H':
		return ss.cw.send(true)
	case 'D', 'E':
		// Describe or Execute without a Bind first: on one leg.
		shards := ss.xt.shards()
		if len(shards) == 0 {
			shards = []string{ss.preferredTarget().Shard}
		}
		f, err := ss.crossRequest(shards[:1], &fanPlan{readOnly: true})
		if err != nil {
			return ss.crossFailed(err)
		}
		ss.fan = f
		return f.message(typ, n)
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
	ss.xt.failed = true
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
	if xt.failed {
		return ss.cw.send(true, errInFailedTx.Response(), &pgproto3.ReadyForQuery{TxStatus: 'E'})
	}
	if r == nil {
		rr := ss.routeMessage('Q', n, body, false, a, false)
		r = &rr
	}
	if r.refuse != nil {
		return ss.crossRefuse(r.refuse, true)
	}
	shards, plan := ss.crossShards(*r)
	f, err := ss.crossRequest(shards, plan)
	if err != nil {
		return ss.crossFailed(err)
	}
	if sql, err = f.pinTime(sql); err != nil {
		f.queueError(pgerr.From(err))
	}
	f.addQuery(sql)
	return ss.endFanOut(f.run())
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
	return ss.xt.status()
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
		xt.failed = true
		ss.srv.metrics.Refused.WithLabelValues("two_phase_statement").Inc()
		return true, ss.cw.send(false, e.Response())
	case a.tx == txCommit:
		return ss.crossCommit()
	case a.tx == txRollback:
		return false, ss.crossRollback()
	case a.tx == txBegin:
		w := &pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "25001", Message: "there is already a transaction in progress"}
		return false, ss.cw.send(false, w, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")})
	case xt.failed && a.tx != txRollbackTo:
		return true, ss.cw.send(false, errInFailedTx.Response())
	}
	shards := xt.shards()
	if len(shards) == 0 {
		shards = []string{ss.preferredTarget().Shard}
	}
	f, err := ss.crossRequest(shards, &fanPlan{readOnly: true, broadcast: true})
	if err != nil {
		return true, ss.crossFailed(err)
	}
	f.add(fanItem{typ: 'Q'}, func(l *fanLeg) { l.out = wire.AppendQuery(l.out, sql) })
	if err := f.flush(true); err != nil {
		f.destroy()
		return true, ss.endFanOut(ss.sessionError(err))
	}
	ss.mu.Lock()
	if a.touchesState() {
		ss.dirty.note(a)
	}
	switch {
	case f.failed:
		xt.failed = true
	case a.tx == txRollbackTo:
		xt.failed = false
	}
	if !f.failed {
		xt.replay = recordTxStmt(xt.replay, a, sql)
		if xt.now != "" && !slices.ContainsFunc(xt.replay, func(s txStmt) bool { return strings.HasPrefix(s.sql, "SET LOCAL "+router.NowSetting) }) {
			// Rolled back to before the first write to replicated tables:
			// the next one sets brownie.now again.
			xt.now = ""
			for _, l := range xt.legs {
				l.now = false
			}
		}
	}
	ss.txStatus = xt.status()
	ss.mu.Unlock()
	f.release()
	return f.failed, ss.endFanOut(nil)
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
	if ss.xt.failed {
		// The server would skip everything up to Sync after the error.
		f, err := ss.crossRequest(nil, &fanPlan{readOnly: true})
		if err != nil {
			return ss.crossFailed(err)
		}
		f.queueError(errInFailedTx)
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
	f, err := ss.crossRequest(shards, plan)
	if err != nil {
		return ss.crossFailed(err)
	}
	ss.fan = f
	if r.refuse != nil {
		ss.srv.metrics.RouteErrors.WithLabelValues(string(r.refuse.Code)).Inc()
		f.queueError(r.refuse)
		return nil
	}
	return f.bind(n, body, plan)
}

// crossCommit commits a transaction spanning shards and answers the
// client with COMMIT or the error (not ReadyForQuery): a failed one rolls
// back; legs that only read commit first; then the one leg that wrote
// commits alone, or several commit in two phases (twophase.go).
func (ss *session) crossCommit() (failed bool, err error) {
	xt := ss.xt
	if xt.failed {
		return false, ss.crossRollback()
	}
	f := ss.legsRequest()
	var readers, writers []*fanLeg
	for _, l := range f.legs {
		if l.tx.wrote {
			writers = append(writers, l)
		} else {
			readers = append(readers, l)
		}
	}
	err = f.each(readers, func(*fanLeg) string { return "COMMIT" })
	outcome := "committed"
	switch {
	case err != nil:
	case len(writers) <= 1:
		if err = f.each(writers, func(*fanLeg) string { return "COMMIT" }); err == nil && f.firstErr != nil {
			f.sendError(nil)
		}
	default:
		wf := &fanOut{ss: ss, plan: f.plan, xt: xt, start: f.start, legs: writers}
		err = wf.commitTwoPhase()
		f.failed, f.clientGone = wf.failed, wf.clientGone
	}
	if err == nil && f.failed {
		outcome = "rolled_back"
	}
	if err != nil {
		outcome = "unknown"
	}
	ss.srv.metrics.CrossShardTx.WithLabelValues(outcome, legCount(len(xt.legs))).Inc()
	if err != nil {
		return true, ss.endFanOut(ss.crossFailed(err))
	}
	if !f.failed {
		now := time.Now()
		ss.mu.Lock()
		for _, l := range writers {
			ss.wroteLocked(l.tx.shard, now)
		}
		ss.mu.Unlock()
		f.emit('C', []byte("COMMIT\x00"))
	}
	ss.exitCross(f)
	return f.failed, ss.endFanOut(nil)
}

// crossRollback rolls the transaction back on every leg and answers the
// client with ROLLBACK (not ReadyForQuery).
func (ss *session) crossRollback() error {
	xt := ss.xt
	f := ss.legsRequest()
	if err := f.each(f.legs, func(*fanLeg) string { return "ROLLBACK" }); err != nil {
		return ss.endFanOut(ss.crossFailed(err))
	}
	ss.srv.metrics.CrossShardTx.WithLabelValues("rolled_back", legCount(len(xt.legs))).Inc()
	f.failed = false
	f.emit('C', []byte("ROLLBACK\x00"))
	ss.exitCross(f)
	return ss.endFanOut(nil)
}

// legsRequest is a request on every leg of the transaction, in map order,
// for its end.
func (ss *session) legsRequest() *fanOut {
	xt := ss.xt
	f := &fanOut{ss: ss, plan: &fanPlan{}, xt: xt, start: time.Now()}
	for _, shard := range ss.srv.router.Map().ShardNames() {
		if l := xt.leg(shard); l != nil {
			f.legs = append(f.legs, &fanLeg{c: l.c, u: l.c.Value, tx: l})
		}
	}
	ss.mu.Lock()
	ss.fanning = true
	for _, l := range f.legs {
		ss.fanUps = append(ss.fanUps, l.u)
	}
	ss.mu.Unlock()
	return f
}

// exitCross gives the legs back after the transaction's end: settings the client changed are read back on each, then
// each goes to its pool (or stays parked for a session with state).
func (ss *session) exitCross(f *fanOut) {
	xt := ss.xt
	ss.mu.Lock()
	d := ss.dirty
	ss.dirty = dirtyState{}
	ss.mu.Unlock()
	for _, l := range xt.legs {
		u := l.c.Value
		if d.any() && u.txStatus == 'I' {
			if err := ss.settle(u, d); err != nil {
				u.txStatus = 'X' // destroyed below
			}
		}
	}
	if len(xt.legs) > 0 {
		_ = ss.reportParams(xt.legs[0].c.Value, false)
	}
	ss.mu.Lock()
	for _, l := range xt.legs {
		if l.c.Value.txStatus == 'I' {
			ss.keepLocked(l.c)
		} else {
			l.c.Destroy()
		}
	}
	ss.xt, ss.crossing = nil, false
	ss.txStatus, ss.txBegin, ss.txReplay = 'I', nil, nil
	ss.mu.Unlock()
}

// abandonCross rolls back every leg of a transaction the client left, or
// that cannot go on: each leg is rolled back and given back, or destroyed
// when that fails.
func (ss *session) abandonCross() {
	xt := ss.xt
	if xt == nil {
		return
	}
	ss.srv.metrics.CrossShardTx.WithLabelValues("rolled_back", legCount(len(xt.legs))).Inc()
	timeout := ss.srv.cfg.Pool.ResetTimeout
	for _, l := range xt.legs {
		u := l.c.Value
		_ = u.conn.SetDeadline(time.Now().Add(timeout))
		err := u.exec("ROLLBACK", nil)
		_ = u.conn.SetDeadline(time.Time{})
		if err != nil || u.txStatus != 'I' {
			ss.log.Debug("destroying a leg of an abandoned transaction", zap.String("shard", l.shard), zap.Error(err))
			l.c.Destroy()
			continue
		}
		ss.mu.Lock()
		ss.keepLocked(l.c)
		ss.mu.Unlock()
	}
	ss.mu.Lock()
	ss.xt, ss.crossing = nil, false
	ss.txStatus, ss.txBegin, ss.txReplay = 'I', nil, nil
	ss.mu.Unlock()
}

// legCount is the shards label of the cross-shard transaction metric.
func legCount(n int) string {
	switch {
	case n <= 1:
		return "1"
	case n == 2:
		return "2"
	}
	return "3+"
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
		iso := strings.ToLower(ss.want["default_transaction_isolation"])
		ss.txBegin, ss.txReplay = []string{sql}, nil
		ss.txMovable = !a.txSnapshot && iso != "repeatable read" && iso != "serializable"
	case a.local || a.tx == txSavepoint || a.tx == txRelease || a.tx == txRollbackTo:
		ss.txReplay = recordTxStmt(ss.txReplay, a, sql)
	}
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
// the other, each on its own; the client gets the first shard's answer,
// or an error naming the shards where it succeeded and where it failed.
func (ss *session) eachShard(typ byte, body []byte, plan *fanPlan) error {
	if typ != 'Q' {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "a statement that cannot run inside a transaction block runs on several shards only as a simple query")
		return ss.cw.send(false, e.Response())
	}
	sql := string(body[:len(body)-1])
	var ok, failed []string
	var firstErr *pgerr.Error
	tag := ""
	for _, t := range plan.targets {
		c, err := ss.takeConn(t)
		if err == nil {
			err = c.Value.exec(sql, nil)
			if err == nil && tag == "" {
				tag = c.Value.tag
			}
			if c.Value.txStatus == 'I' && (err == nil || errors.As(err, new(*pgerr.Error))) {
				ss.mu.Lock()
				ss.keepLocked(c)
				ss.mu.Unlock()
			} else {
				c.Destroy()
			}
		}
		if err != nil {
			failed = append(failed, t.Shard)
			if firstErr == nil {
				firstErr = pgerr.From(err)
			}
			continue
		}
		ok = append(ok, t.Shard)
	}
	if firstErr == nil {
		return ss.cw.send(true, &pgproto3.CommandComplete{CommandTag: []byte(tag)}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	e := *firstErr
	e.Severity = pgerr.SevError
	e.Message = "on shard " + failed[0] + ": " + e.Message
	e.Detail = strings.TrimSpace("it succeeded on " + listOrNone(ok) + " and failed on " + strings.Join(failed, ", ") + ". " + e.Detail)
	return ss.cw.send(true, e.Response(), &pgproto3.ReadyForQuery{TxStatus: 'I'})
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "no shard"
	}
	return strings.Join(s, ", ")
}
