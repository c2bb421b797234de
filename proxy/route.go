package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// hintState is the set of routing hints in effect at one level (session,
// or the current transaction for SET LOCAL).
type hintState struct {
	team, shard string
	primary     bool
	set         bool // the level has hints (for LOCAL: overrides the session)
}

// apply records h at this level.
func (s *hintState) apply(h router.Hint) {
	s.set = true
	switch h.Name {
	case router.HintAll:
		*s = hintState{set: true}
	case router.HintTeam:
		s.team = h.Value
	case router.HintShard:
		s.shard = h.Value
	case router.HintRole:
		s.primary = !h.Reset && strings.EqualFold(h.Value, "primary")
	}
}

// routeResult is where one client message goes.
type routeResult struct {
	target router.Target
	// compatible, when set, says whether an upstream already held (for
	// another target) may serve the message instead, e.g. the primary of
	// the right shard for a read.
	compatible func(router.Target) bool
	// refuse, when set, is raised in the message's place, in order.
	refuse *pgerr.Error
	// fan, when set, runs the message on several shards at once (see
	// fanOut); target and compatible are unused.
	fan *fanPlan
	// anyShard: the statement may run on any shard (no table, or only
	// replicated tables read). readOnly: it only reads; noData: it touches
	// no table data (SET, SHOW, transaction control); txFree: it neither
	// depends on nor acts on the transaction it runs in
	// (router.Decision.TxFree).
	anyShard, readOnly, noData, txFree bool
	// follow (routing off): target is unset; the message goes to the
	// upstream held, else to the preferred target, which moveToLocked
	// resolves under the lock it holds anyway.
	follow bool
}

// movable reports whether a transaction that ran only statements like
// this one may move to another shard (see session.relocateLocked), or run
// it ahead of its BEGIN (see session.readAheadLocked): a read of nothing
// or of replicated tables, the same on every shard, that is not tied to
// its transaction.
func (r routeResult) movable() bool {
	return r.refuse == nil && r.fan == nil && r.anyShard && r.readOnly && r.txFree
}

// routingEnabled reports whether statements are routed by the shard map
// (SHARD_MAP_FILE); without a map every message goes to the one primary.
func (s *Server) routingEnabled() bool { return s.cfg.Routing.ShardMapFile != "" }

// primaryTarget returns the target for writes on shard.
func (s *Server) primaryTarget(shard string) (router.Target, bool) {
	sh, ok := s.router.Map().Shard(shard)
	if !ok {
		return router.Target{}, false
	}
	return router.Target{Shard: shard, Role: router.Primary, Host: s.health.Primary(shard, sh.Primary)}, true
}

// factsLocked is what the router needs to know about the session. Called
// with ss.mu held.
func (ss *session) factsLocked() router.SessionFacts {
	f := router.SessionFacts{Database: ss.database, User: ss.user}
	inTx := len(ss.deferred) > 0 || ss.txStatus != 'I' || !ss.synced || (ss.up != nil && ss.pending > 0 && ss.readOnlyTx)
	if !inTx && ss.pending == 0 {
		ss.local = hintState{} // the transaction that set them is over
		ss.readOnlyTx = false
	}
	h := ss.hintsLocked()
	f.TeamHint, f.ShardHint, f.RolePrimary = h.team, h.shard, h.primary
	f.InTransaction = inTx
	f.ReadOnlyTransaction = ss.readOnlyTx
	if ss.up != nil && inTx {
		f.ShardsInUse = []string{ss.up.Value.target.Shard}
	}
	return f
}

// hintsLocked returns the hints in effect: the transaction's (SET LOCAL)
// when it set any, else the session's. Called with ss.mu held.
func (ss *session) hintsLocked() hintState {
	if ss.local.set {
		return ss.local
	}
	return ss.hints
}

// applyHintsLocked records the hints a routed statement sets.
func (ss *session) applyHintsLocked(hs []router.Hint) {
	for _, h := range hs {
		if h.Local {
			if !ss.local.set {
				ss.local = ss.hints
			}
			ss.local.apply(h)
			continue
		}
		ss.hints.apply(h)
		if ss.local.set { // a session-level SET inside the transaction shows through
			ss.local.apply(h)
		}
	}
}

// route decides where a Query or Bind goes: the router's decision, the
// shard's current primary, or one of its replicas when the statement may
// read there and the replica has replayed the session's last write on the
// shard. a is the statement's analysis (the proxy's, already made).
func (ss *session) route(st router.StmtInfo, a *analysis) routeResult {
	s := ss.srv
	ss.mu.Lock()
	f := ss.factsLocked()
	ss.mu.Unlock()
	d, err := s.router.Route(f, st)
	if err != nil {
		e := pgerr.From(err)
		s.metrics.RouteErrors.WithLabelValues(string(e.Code)).Inc()
		ss.log.Debug("statement refused by routing", zap.String("sqlstate", string(e.Code)), zap.Error(err))
		return ss.refusal(e)
	}
	ss.mu.Lock()
	ss.applyHintsLocked(d.SetHints)
	var cur router.Target
	attached := ss.up != nil
	if attached {
		cur = ss.up.Value.target
	}
	ss.mu.Unlock()

	shard := ""
	switch {
	case len(d.Shards) == 1:
		shard = d.Shards[0]
	case d.Kind == router.AnyShard:
		for _, name := range d.Shards {
			if attached && name == cur.Shard {
				shard = name
				break
			}
		}
		for _, name := range d.Shards {
			if shard == "" && s.health.PrimaryOK(name) {
				shard = name
			}
		}
		if shard == "" && len(d.Shards) > 0 {
			shard = d.Shards[0]
		}
	default:
		return ss.routeFanOut(d, f, a)
	}
	noData := a != nil && a.noData
	t, ok := ss.targetFor(shard, d)
	if !ok {
		return ss.refusal(pgerr.Errorf(pgerr.ServerRejected, "shard %q is not in the shard map", shard))
	}
	readOnly := d.ReadOnly
	if !readOnly && !noData {
		ss.mu.Lock()
		ss.txWrote = shard
		ss.mu.Unlock()
	}
	s.metrics.RouteDecisions.WithLabelValues(d.Kind.String(), d.Reason.String(), t.Role.String()).Inc()
	if ss.log.Enabled(zap.DebugLevel) {
		ss.log.Debug("statement routed", zap.String("target", t.String()), zap.String("addr", t.Host.Addr), zap.String("decision", d.Explain()),
			zap.Bool("in_transaction", f.InTransaction), zap.Bool("read_only_transaction", f.ReadOnlyTransaction))
	}
	anyShard := d.Kind == router.AnyShard
	return routeResult{target: t, anyShard: anyShard, readOnly: readOnly, noData: noData, txFree: d.TxFree, compatible: func(c router.Target) bool {
		// SET, transaction control and the like run wherever the session
		// is; other statements need their shard (any, for AnyShard) and a
		// primary unless they only read.
		return noData || ((anyShard || c.Shard == shard) && (c.Role == router.Primary || readOnly))
	}}
}

// targetFor returns where a statement decided by d runs on shard: the
// shard's current primary, or one of its replicas when d allows a replica
// and one has replayed the session's last write on the shard.
func (ss *session) targetFor(shard string, d router.Decision) (router.Target, bool) {
	s := ss.srv
	t, ok := s.primaryTarget(shard)
	if !ok || !d.Replica || d.ForcePrimary {
		return t, ok
	}
	ss.mu.Lock()
	wroteAt := ss.lastWrite[shard]
	if ss.txWrote == shard {
		wroteAt = time.Now() // a write on the shard is not committed yet
	}
	ss.mu.Unlock()
	if h, ok := s.health.Replica(shard, wroteAt, s.replicaBusy(shard)); ok {
		t = router.Target{Shard: shard, Role: router.Replica, Host: h}
	}
	return t, true
}

// wroteLocked records that a write of the session's committed on shard at
// at, so its next reads there wait for a replica that has replayed it.
// Called with ss.mu held.
func (ss *session) wroteLocked(shard string, at time.Time) {
	if ss.lastWrite == nil {
		ss.lastWrite = map[string]time.Time{}
	}
	ss.lastWrite[shard] = at
}

// routeFanOut completes the route of a statement that needs several
// shards: a read (merged), a write spanning shards, or a write to
// replicated tables or the schema on every shard (broadcast). Outside a
// transaction a write commits on every shard or none (two-phase); inside
// one the shards join the client's transaction (crossTx). One INSERT of
// rows for several shards is refused: each shard would get every row.
func (ss *session) routeFanOut(d router.Decision, f router.SessionFacts, a *analysis) routeResult {
	s := ss.srv
	if a != nil && a.cursor {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "a cursor over rows on shards %s is not supported", strings.Join(d.Shards, ", "))
		e.Hint = "read the rows with one query (merged across shards), or add the team key (team_id) so the cursor reads one shard"
		e.Detail = d.Explain()
		s.metrics.RouteErrors.WithLabelValues(string(e.Code)).Inc()
		s.metrics.Refused.WithLabelValues("cursor").Inc()
		return ss.refusal(e)
	}
	if d.Inserts && !d.Broadcast {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "INSERT of rows for shards %s in one statement is not supported", strings.Join(d.Shards, ", "))
		e.Hint = "insert each team's rows with a statement of their own"
		e.Detail = d.Explain()
		s.metrics.RouteErrors.WithLabelValues(string(e.Code)).Inc()
		return ss.refusal(e)
	}
	plan := &fanPlan{ReadOnly: d.ReadOnly, Broadcast: d.Broadcast, DDL: d.Reason == router.ReasonSchemaChange,
		NoTxBlock: a != nil && a.noTxBlock, Copy: d.Copy, Explain: d.Explain()}
	for _, shard := range d.Shards {
		t, ok := ss.targetFor(shard, d)
		if !ok {
			return ss.refusal(pgerr.Errorf(pgerr.ServerRejected, "shard %q is not in the shard map", shard))
		}
		plan.Targets = append(plan.Targets, t)
	}
	s.metrics.RouteDecisions.WithLabelValues(d.Kind.String(), d.Reason.String(), plan.Targets[0].Role.String()).Inc()
	if ss.log.Enabled(zap.DebugLevel) {
		ss.log.Debug("statement fanned out", zap.Strings("shards", d.Shards), zap.Bool("read_only", d.ReadOnly), zap.String("decision", plan.Explain),
			zap.Bool("in_transaction", f.InTransaction))
	}
	return routeResult{fan: plan}
}

// replicaBusy returns how many connections of each replica of shard are in
// use, for least_busy selection.
func (s *Server) replicaBusy(shard string) func(router.Host) int {
	return func(h router.Host) int {
		s.mu.Lock()
		p := s.pools[poolKey{target: router.Target{Shard: shard, Role: router.Replica, Host: h}, database: s.cfg.Database, user: s.cfg.User}]
		s.mu.Unlock()
		if p == nil {
			return 0
		}
		st := p.Stats()
		return st.Size - st.Idle
	}
}

// preferredTarget is where a message with no statement to route goes when
// the session holds no upstream: the primary of the shard of its
// brownie.shard or brownie.team_id hint, else of the first shard whose
// primary is healthy.
func (ss *session) preferredTarget() router.Target {
	t, _ := ss.greetingTargets()
	return t
}

// greetingTargets returns the preferred target (see preferredTarget) and
// whether the session's hints chose it.
func (ss *session) greetingTargets() (router.Target, bool) {
	s := ss.srv
	if !s.routingEnabled() {
		pt, _ := s.primaryTarget(s.router.Map().Shards[0].Name)
		return pt, false
	}
	ss.mu.Lock()
	h := ss.hintsLocked()
	ss.mu.Unlock()
	t, err := s.router.RouteSession(router.SessionFacts{Database: ss.database, User: ss.user, TeamHint: h.team, ShardHint: h.shard})
	if err == nil && (h.team != "" || h.shard != "") {
		if pt, ok := s.primaryTarget(t.Shard); ok {
			return pt, true
		}
	}
	names := s.router.Map().ShardNames()
	for _, name := range names {
		if s.health.PrimaryOK(name) {
			pt, _ := s.primaryTarget(name)
			return pt, false
		}
	}
	pt, _ := s.primaryTarget(names[0])
	return pt, false
}

// greetingConn takes a checked connection for the greeting: from the
// preferred target, else from any other host that can be reached (see
// greetingCandidates), so a client can connect while any host of the map
// is up, even before the health checks have seen a server die.
func (ss *session) greetingConn() (*pool.Conn[*upstream], error) {
	t, _ := ss.greetingTargets()
	if !ss.srv.routingEnabled() {
		return ss.acquire(t, true)
	}
	var first error
	tried := 0
	for _, c := range ss.greetingCandidates(t) {
		conn, err := ss.acquire(c, true)
		if err == nil {
			return conn, nil
		}
		tried++
		if first == nil {
			first = err
		}
		if !primaryGone(err) {
			break // the client's own problem (settings, certificate): the same on every host
		}
		if c.Role == router.Replica {
			ss.srv.health.Ban(c.Host.Addr, err)
		}
	}
	return nil, greetingFailed(first, tried)
}

// currentOrPreferred is the target for messages that follow the session's
// current upstream (Describe, Close, Flush, FunctionCall, COPY data).
func (ss *session) currentOrPreferred() routeResult {
	ss.mu.Lock()
	up := ss.up
	ss.mu.Unlock()
	if up != nil {
		return routeResult{target: up.Value.target, compatible: func(router.Target) bool { return true }}
	}
	return routeResult{target: ss.preferredTarget()}
}

// refusal raises e in a message's place on the session's current
// upstream, or on the preferred one when it holds none.
func (ss *session) refusal(e *pgerr.Error) routeResult {
	r := ss.currentOrPreferred()
	r.compatible = func(router.Target) bool { return true }
	r.refuse = e
	return r
}

// switchableLocked reports whether the session may leave its current
// upstream: nothing in flight, between requests, outside any transaction.
func (ss *session) switchableLocked() bool {
	return ss.quietLocked() && ss.txStatus == 'I'
}

// quietLocked reports whether the session holds an upstream with nothing
// in flight, between requests (possibly inside a transaction).
func (ss *session) quietLocked() bool {
	return ss.up != nil && ss.pending == 0 && ss.synced && !ss.copyIn &&
		len(ss.expect) == 0 && !ss.internal && !ss.resetting
}

// errCrossShard refuses a statement that needs another upstream than the
// one serving the current transaction.
func errCrossShard(cur, want router.Target) *pgerr.Error {
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "transaction is running on %s and cannot also use %s; transactions spanning shards are not supported yet", cur, want)
	e.Hint = "keep each transaction to one team (add team_id to its statements or SET LOCAL brownie.team_id first)"
	return e
}

// moveToLocked makes the session hold an upstream able to serve r:
// the one it holds when compatible, else (when it may switch) r.target,
// taken from the connections it parked or from the pool. It returns with
// ss.mu held and the session attached, with the error to raise in the
// message's place (r.refuse, or a transaction spanning shards), or with a
// session-ending error.
func (ss *session) moveToLocked(r routeResult) (refuse *pgerr.Error, err error) {
	for {
		for ss.internal {
			ss.waitLocked()
		}
		if ss.ended {
			return nil, errSessionEnded
		}
		if r.follow {
			if ss.up != nil {
				return r.refuse, nil
			}
			r.target, r.follow = ss.preferredTarget(), false // takes no lock with routing off
		}
		if ss.up == nil {
			if err := ss.attachToLocked(r.target); err != nil {
				return nil, err
			}
			// Attached to r.target, or to its shard's primary when the
			// replica could not be reached: either serves r (only reads go
			// to replicas). Going round again would park the primary and
			// try the replica forever.
			return r.refuse, nil
		}
		cur := ss.up.Value.target
		if cur == r.target {
			return r.refuse, nil
		}
		if ss.switchableLocked() {
			ss.parkLocked()
			continue
		}
		if r.compatible != nil && r.compatible(cur) {
			return r.refuse, nil
		}
		if ss.pending > 0 && ss.synced && !ss.copyIn {
			ss.waitLocked() // let the requests in flight finish, then decide again
			continue
		}
		if ss.srv.routingEnabled() && ss.quietLocked() && ss.txStatus != 'I' {
			if ss.txMovable && ss.txStatus == 'T' {
				if err := ss.relocateLocked(); err != nil {
					return nil, err
				}
				continue
			}
			return nil, errNeedCrossTx
		}
		e := errCrossShard(cur, r.target)
		ss.srv.metrics.RouteErrors.WithLabelValues(string(e.Code)).Inc()
		return e, nil
	}
}

// attachToLocked attaches a parked connection for t or one from t's pool.
// Called and returns with ss.mu held; mu is released while acquiring.
func (ss *session) attachToLocked(t router.Target) error {
	ss.queueable = len(ss.deferred) == 0 // the client's request waits: a cancel may end the wait
	ss.mu.Unlock()
	c, err := ss.takeConn(t)
	if err == nil {
		if err = ss.reprepare(c); err != nil {
			c.Destroy()
		}
	}
	ss.mu.Lock()
	ss.queueable = false
	if err != nil {
		return err
	}
	err = ss.reportParamsLocked(c.Value) // before anything c answers
	if err == nil && ss.ended {
		err = errSessionEnded
	}
	if err != nil {
		ss.mu.Unlock()
		c.Release()
		ss.mu.Lock()
		return err
	}
	ss.startRelayLocked(c)
	return nil
}

// reprepare prepares the client's statements again, under the client's
// own names, on c, a new connection of a session whose statements go to
// the server under those names (passthrough): the session's previous
// connection died while the session was idle on it. Session goroutine,
// without ss.mu; the caller owns c.
func (ss *session) reprepare(c *pool.Conn[*upstream]) error {
	if !ss.passthrough() || len(ss.stmts) == 0 {
		return nil
	}
	names := make([]string, 0, len(ss.stmts))
	for name := range ss.stmts {
		names = append(names, name)
	}
	slices.Sort(names)
	defs := make([]*stmtDef, len(names))
	for i, name := range names {
		defs[i] = ss.stmts[name]
	}
	if err := c.Value.prepare(names, defs); err != nil {
		e := pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream %s lost; the session's prepared statements could not be prepared again on a new connection", c.Value.target)
		e.Detail = err.Error()
		return e
	}
	ss.srv.metrics.StmtCache.WithLabelValues("reprepare").Add(float64(len(names)))
	ss.log.Debug("prepared statements prepared again on a new connection", zap.Int("statements", len(names)))
	return nil
}

// takeConn returns a connection for t with the client's settings applied:
// the one the session parked for t, else one from t's pool (from the
// shard's primary when t's replica cannot be reached, banning the
// replica). Called without ss.mu; the caller owns the connection.
func (ss *session) takeConn(t router.Target) (*pool.Conn[*upstream], error) {
	ss.mu.Lock()
	c := ss.parked[t]
	delete(ss.parked, t)
	ss.mu.Unlock()
	if c != nil {
		// A parked connection may have died while the session was elsewhere
		// (its host stopped, its backend was terminated): when the session
		// held nothing on it, a new connection serves t instead.
		var err error
		if !c.Value.Alive() {
			err = ss.parkedLost(c, errors.New("connection closed while parked"))
		} else if err = ss.syncSettings(c.Value); err == nil {
			return c, nil
		} else if cl := pgerr.From(err).Code.Class(); cl == "08" || cl == "57" {
			err = ss.parkedLost(c, err)
		} else {
			c.Destroy()
		}
		if err != nil {
			return nil, err
		}
	}
	if t.Role == router.Primary {
		return ss.acquirePrimary(t) // waits for a primary while the shard has none
	}
	c, err := ss.acquire(t, false)
	if err != nil && t.Role == router.Replica && pgerr.From(err).Code != pgerr.QueryCanceled {
		ss.srv.health.Ban(t.Host.Addr, err)
		if pt, ok := ss.srv.primaryTarget(t.Shard); ok {
			c, err = ss.takeConn(pt) // the primary connection the session parked, if any
		}
	}
	return c, err
}

// parkedLost destroys c, a parked connection of the session found dead,
// and returns nil when the session keeps no state on its backends (the
// caller then takes a new connection for c's target), else the error
// that ends the session.
func (ss *session) parkedLost(c *pool.Conn[*upstream], err error) error {
	u := c.Value
	c.Destroy()
	ss.mu.Lock()
	state := ss.backendStateLocked()
	if !state {
		ss.checkNext = true
	}
	ss.mu.Unlock()
	if state {
		ss.srv.metrics.UpstreamsLost.WithLabelValues(u.target.Shard, u.target.Role.String(), "session_ended").Inc()
		return ss.lostError(u, err)
	}
	ss.srv.metrics.UpstreamsLost.WithLabelValues(u.target.Shard, u.target.Role.String(), "replaced").Inc()
	ss.log.Info("parked upstream connection lost; the session goes on with a new one",
		zap.String("shard", u.target.Shard), zap.String("addr", u.target.Host.Addr), zap.Uint32("backend_pid", u.pid), zap.Error(err))
	return nil
}

// stopRelayLocked stops the relay goroutine serving the current (quiet)
// upstream and detaches it, waking the goroutine from its read with a past
// deadline. It returns the connection for the caller to own, or nil when
// the relay found it broken (then it is destroyed). Called and returns
// with ss.mu held; mu is released while waiting.
func (ss *session) stopRelayLocked() *pool.Conn[*upstream] {
	c, done := ss.up, ss.relayDoneLocked()
	ss.parking = true
	ss.setUpstreamDeadline(c.Value, time.Unix(1, 0))
	ss.mu.Unlock()
	<-done
	ss.mu.Lock()
	ss.parking = false
	ss.up = nil
	ss.setUpstreamDeadline(c.Value, time.Time{})
	if ss.upGone {
		ss.upGone = false
		c.Destroy()
		return nil
	}
	return c
}

// parkLocked stops relaying the current (idle) upstream and keeps it for
// the session when it carries session state (session mode, pins), or gives
// it back to its pool. Called with ss.mu held.
func (ss *session) parkLocked() {
	if c := ss.stopRelayLocked(); c != nil {
		ss.keepLocked(c)
	}
}

// keepLocked parks c (idle, owned by the caller) for the session when the
// session carries state (session mode, pins) and has none parked for c's
// target, else gives it back to its pool. Called with ss.mu held.
func (ss *session) keepLocked(c *pool.Conn[*upstream]) {
	t := c.Value.target
	if len(ss.pins) > 0 && ss.parked[t] == nil {
		if ss.parked == nil {
			ss.parked = map[router.Target]*pool.Conn[*upstream]{}
		}
		ss.parked[t] = c
		return
	}
	c.Release()
}

// releaseParked resets and gives back the connections the session parked
// (or destroys them when the reset fails). Called when the session ends,
// from the session goroutine; nobody reads parked connections.
func (ss *session) releaseParked() {
	ss.mu.Lock()
	parked := ss.parked
	ss.parked = nil
	ss.mu.Unlock()
	for _, c := range parked {
		u := c.Value
		q := ss.srv.cfg.Pool.ResetQuery
		ok := u.txStatus == 'I' && u.Alive()
		if ok && q != "" {
			_ = u.conn.SetDeadline(time.Now().Add(ss.srv.cfg.Pool.ResetTimeout))
			ok = u.exec(q, nil) == nil
			_ = u.conn.SetDeadline(time.Time{})
			if ok {
				u.stmts.clear()
				u.unnamed = nil
				u.applied, u.appliedTag = map[string]string{}, nil
			}
		}
		if ok {
			c.Release()
		} else {
			c.Destroy()
		}
	}
}

// deferBegin answers a transaction-control statement the sidecar can
// handle without an upstream, when routing is on and the session is
// between transactions or inside one it deferred: BEGIN is answered at
// once and replayed on the upstream the transaction's first statement
// routes to (so that statement, not the BEGIN, picks the shard); hint-only
// SET LOCAL statements are kept for the replay; COMMIT or ROLLBACK of a
// transaction that ran nothing just ends it. It reports whether it
// answered.
func (ss *session) deferBegin(a *analysis, sql string) (bool, error) {
	tag, status, ok := ss.deferTx(a, sql, true)
	if !ok {
		return false, nil
	}
	return true, ss.cw.send(true, &pgproto3.CommandComplete{CommandTag: []byte(tag)}, &pgproto3.ReadyForQuery{TxStatus: status})
}

// deferBind is deferBegin for a Bind of a transaction-control statement
// (psycopg 3 sends BEGIN, COMMIT and ROLLBACK with the extended
// protocol): the sidecar answers the request itself (BindComplete now,
// the command tag at Execute, ReadyForQuery at Sync: see localReq). It
// reports whether it answered.
func (ss *session) deferBind(body []byte) (bool, error) {
	_, name, _, err := bindHeader(body)
	if err != nil {
		return false, nil
	}
	def := ss.stmtNamed(name)
	if def == nil || def.a == nil || def.a.tx == txNone {
		return false, nil
	}
	tag, status, ok := ss.deferTx(def.a, def.query, false)
	if !ok {
		return false, nil
	}
	ss.lreq = &localReq{tag: tag, status: status}
	return true, ss.cw.send(false, &pgproto3.BindComplete{})
}

// deferTx decides whether the sidecar answers a transaction-control
// statement itself (see deferBegin) and does its bookkeeping: the tag and
// transaction status to answer with. hints allows hint-only SET LOCALs
// (their values are in the text).
func (ss *session) deferTx(a *analysis, sql string, hints bool) (string, byte, bool) {
	if a == nil || !ss.srv.routingEnabled() {
		return "", 0, false
	}
	ss.mu.Lock()
	idle := !ss.ended && (ss.up == nil || ss.switchableLocked()) && ss.txStatus == 'I'
	deferred := len(ss.deferred) > 0
	var tag string
	status := byte('T')
	switch {
	case a.tx == txBegin && idle && !deferred:
		if ss.up != nil {
			ss.parkLocked()
		}
		ss.deferred = append(ss.deferred, sql)
		ss.readOnlyTx = a.txReadOnly
		ss.txSnapshot = a.txSnapshot
		tag = "BEGIN"
	case deferred && a.tx == txCommit:
		tag, status = "COMMIT", 'I'
		if ss.deferredFailedLocked() {
			tag = "ROLLBACK" // as Postgres ends a failed transaction
		}
		ss.deferred, ss.readOnlyTx, ss.local = nil, false, hintState{}
	case deferred && a.tx == txRollback:
		ss.deferred, ss.readOnlyTx, ss.local = nil, false, hintState{}
		tag, status = "ROLLBACK", 'I'
	case deferred && a.hintsOnly && hints && !ss.deferredFailedLocked():
		ss.mu.Unlock()
		hs, err := ss.srv.router.SessionHints(sql)
		if err != nil {
			return "", 0, false // the replay on an upstream reports it in order
		}
		ss.mu.Lock()
		ss.applyHintsLocked(hs)
		ss.deferred = append(ss.deferred, sql)
		tag = "SET"
	default:
		ss.mu.Unlock()
		return "", 0, false
	}
	ss.mu.Unlock()
	return tag, status, true
}

// replayDeferredLocked sends the deferred BEGIN (and hint settings) ahead
// of the transaction's first statement (typ Query, Bind or FunctionCall,
// routed as r) on the upstream it routed to; their replies are
// swallowed. Other messages (Describe, Close) run outside the
// transaction: they need none, and must not pick its shard. Neither does
// a read the transaction may run ahead of its BEGIN (readAheadLocked).
func (ss *session) replayDeferredLocked(typ byte, r routeResult) error {
	if len(ss.deferred) == 0 || (typ != 'Q' && typ != 'B' && typ != 'F') {
		return nil
	}
	if ss.readAheadLocked(typ, r) {
		ss.preRead.Store(true)
		ss.preErr = false
		ss.srv.metrics.ReadsAhead.Inc()
		return nil
	}
	var out []byte
	ss.up.Value.unnamed = nil // a simple Query drops the server's unnamed statement
	for _, q := range ss.deferred {
		out = wire.AppendQuery(out, q)
		// The statement that fails the transaction ahead of the client's
		// has its error swallowed too: the client's statement gets the
		// server's own 25P02.
		ss.expect = append(ss.expect, expectation{kind: expQueryInjected, quiet: q == failedTxSQL})
		ss.pending++
		ss.injected.Add(1)
	}
	ss.txBegin, ss.txReplay = ss.deferred, nil
	ss.txMovable = ss.readCommittedLocked(ss.txSnapshot)
	ss.deferred = nil
	ss.txStatus = 'T'
	if _, err := ss.uw.Write(out); err != nil {
		return ss.upstreamWriteFailedLocked(err)
	}
	return nil
}

// A transaction whose BEGIN the sidecar deferred may run its first
// statements ahead of that BEGIN, outside any transaction, when they are
// reads of nothing or of replicated tables that are not tied to their
// transaction (router.Decision.TxFree) and the transaction is READ
// COMMITTED: each statement takes its own snapshot there, so the answer is
// the one the transaction would have had, and the BEGIN then goes with the
// first statement that needs a shard. A request that starts with a user
// lookup and then works on one team's rows runs on that team's shard
// alone, without a transaction opened and rolled back elsewhere.
//
// When such a read fails, the client is told its transaction failed
// (ReadyForQuery 'E'), and failedTxSQL joins the deferred statements: it
// fails the transaction where it is replayed, so what follows gets the
// server's own answers in a failed transaction (25P02, ROLLBACK TO,
// COMMIT answering ROLLBACK).

// failedTxSQL fails the transaction it runs in with Postgres's 25P02.
var failedTxSQL = raiseStatement(fanout.ErrInFailedTx)

// readAheadLocked reports whether the request starting with the message
// typ, routed as r, runs ahead of the deferred BEGIN. A Bind qualifies
// only when the rest of its request (Describe, Execute, Sync) is already
// buffered: a BEGIN replayed in the middle of an extended-protocol
// request would share its implicit transaction. Called with ss.mu held.
func (ss *session) readAheadLocked(typ byte, r routeResult) bool {
	if len(ss.deferred) != 1 || !ss.readCommittedLocked(ss.txSnapshot) || !r.movable() || ss.pending > 0 || !ss.synced {
		return false
	}
	switch typ {
	case 'Q':
		return true
	case 'B':
		return ss.cr.Remaining() == 0 && requestBuffered(ss.cr)
	}
	return false
}

// readCommittedLocked reports whether a transaction whose BEGIN asked for
// REPEATABLE READ or SERIALIZABLE (snapshot) or not runs at READ
// COMMITTED, given the session's default_transaction_isolation: each of
// its statements then takes a snapshot of its own. Called with ss.mu held.
func (ss *session) readCommittedLocked(snapshot bool) bool {
	iso := strings.ToLower(ss.want["default_transaction_isolation"])
	return !snapshot && iso != "repeatable read" && iso != "serializable"
}

// requestBuffered reports whether the messages buffered in cr end an
// extended-protocol request at a Sync with only Describe and Execute
// before it.
func requestBuffered(cr *wire.Reader) bool {
	buf, _ := cr.Underlying().Peek(cr.Buffered())
	for len(buf) >= 5 {
		switch buf[0] {
		case 'S':
			return true
		case 'D', 'E':
		default:
			return false
		}
		n := int(binary.BigEndian.Uint32(buf[1:5])) + 1
		if n < 5 || n > len(buf) {
			return false
		}
		buf = buf[n:]
	}
	return false
}

// deferredFailedLocked reports whether the deferred transaction failed in
// a statement run ahead of its BEGIN. Called with ss.mu held.
func (ss *session) deferredFailedLocked() bool {
	return len(ss.deferred) > 0 && ss.deferred[len(ss.deferred)-1] == failedTxSQL
}

// deferredStatusLocked is the transaction status the client is told while
// its BEGIN is deferred. Called with ss.mu held.
func (ss *session) deferredStatusLocked() byte {
	if ss.deferredFailedLocked() {
		return 'E'
	}
	return 'T'
}

// readAheadDoneLocked ends the read run ahead of the deferred BEGIN once its
// request is over: when it failed, so does the transaction. Called by the
// relay goroutine with ss.mu held.
func (ss *session) readAheadDoneLocked() {
	if ss.preErr && len(ss.deferred) > 0 && !ss.deferredFailedLocked() {
		ss.deferred = append(ss.deferred, failedTxSQL)
	}
	ss.preRead.Store(false)
	ss.preErr = false
}

// waitReadAhead waits until the read run ahead of the deferred BEGIN is
// over, before the session serves the client's next request (its Query,
// Bind or FunctionCall): where that goes depends on whether the
// transaction failed. Session goroutine only.
func (ss *session) waitReadAhead() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for ss.preRead.Load() && !ss.ended && ss.up != nil && ss.pending > 0 {
		ss.waitLocked()
	}
	if ss.preRead.Load() { // the upstream was lost under it: the read failed
		ss.preErr = true
		ss.readAheadDoneLocked()
	}
}

// raiseStatement is a statement that makes the upstream raise e, so a
// sidecar error reaches the client in order with the upstream's replies
// and with the usual effect on an open transaction.
func raiseStatement(e *pgerr.Error) string {
	// The body is itself a quoted literal (not dollar-quoted), so no text
	// in the message can end it.
	var b strings.Builder
	fmt.Fprintf(&b, "BEGIN RAISE EXCEPTION USING ERRCODE = %s, MESSAGE = %s", quoteLiteral(string(e.Code)), quoteLiteral(e.Message))
	if e.Detail != "" {
		fmt.Fprintf(&b, ", DETAIL = %s", quoteLiteral(e.Detail))
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, ", HINT = %s", quoteLiteral(e.Hint))
	}
	b.WriteString("; END")
	return "DO " + quoteLiteral(b.String())
}

// startHealth runs the health checker until ctx ends.
func (s *Server) startHealth(ctx context.Context) {
	s.poolWG.Add(1)
	go func() {
		defer s.poolWG.Done()
		s.health.Run(ctx)
	}()
}

// startupHints validates and records the brownie.* settings of the
// startup packet (options=-c brownie.team_id=…, or the parameter itself).
func (ss *session) startupHints() error {
	for _, kv := range ss.settings {
		n, ok := router.HintNamed(kv[0])
		if !ok {
			continue
		}
		h := router.Hint{Name: n, Value: kv[1]}
		if err := ss.srv.router.CheckHint(h); err != nil {
			return pgerr.From(err).AsFatal()
		}
		ss.hints.apply(h)
	}
	return nil
}
