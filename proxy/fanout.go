package proxy

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// fanPlan is where a statement spanning shards runs: one target per shard,
// in shard-map order.
type fanPlan struct {
	targets  []router.Target
	readOnly bool
	// broadcast: the statement changes replicated tables or the schema,
	// identically on every shard; the client gets the first shard's
	// answer, and every shard must give the same command tag.
	broadcast bool
	// noTxBlock: Postgres refuses the statement inside a transaction
	// block (VACUUM, CREATE INDEX CONCURRENTLY…); it runs shard by shard.
	noTxBlock bool
	// ddl: the statement changes the schema (not replicated rows).
	ddl bool
	// copy, for COPY FROM STDIN into a sharded table, splits its rows.
	copy    *router.CopySplit
	explain string
}

// joins reports whether a statement planned as q may join a fan-out
// request planned as p: the same shards, and no write in a read's request
// (a read's legs may be replicas and are not wrapped in a transaction).
func (p *fanPlan) joins(q *fanPlan) bool {
	return slices.EqualFunc(p.targets, q.targets, func(a, b router.Target) bool { return a.Shard == b.Shard }) &&
		(q.readOnly || !p.readOnly)
}

// fanOut is one client request — a simple Query, or the extended-protocol
// messages from a Bind up to Sync — run on several shards at once. The
// session goroutine owns it and does all its I/O synchronously while the
// session holds no attachment (the relay goroutine is idle): it sends the
// request to every leg, then reads the legs' answers message by message,
// leg after leg in shard-map order, streaming rows to the client as they
// come and merging the rest: one RowDescription, one command tag counting
// every shard's rows, the first error.
//
// A write outside any transaction runs on every leg inside its own BEGIN
// and is committed, in two phases (twophase.go), only when every leg
// succeeded; else it is rolled back everywhere. Inside a transaction the
// request runs on the transaction's legs (xt, see crossTx), which it
// leaves open.
type fanOut struct {
	ss    *session
	plan  *fanPlan
	legs  []*fanLeg
	items []fanItem // messages whose answers are still to read, in order
	wrap  bool      // a write outside a transaction: BEGIN … COMMIT on every leg
	// skipRest: an error was queued in the request, so later messages are
	// not sent (the server would skip them up to Sync). failed: an error
	// reached the client; answers up to ReadyForQuery are dropped.
	skipRest, failed bool
	firstErr         []byte // body of the first ErrorResponse sent to the client
	clientGone       bool
	start            time.Time
	// xt is the client's transaction spanning shards when the request is
	// one of its statements: the legs are its connections, kept past the
	// request.
	xt *crossTx
	// cur is the merge of the statement last bound in the request (nil:
	// its rows are concatenated).
	cur *mergeState
}

// fanLeg is the request's connection to one shard.
type fanLeg struct {
	c   *pool.Conn[*upstream]
	u   *upstream
	out []byte // messages to send at the next flush
	// exp lists what the leg answers before each item: completions of
	// Parse and Close messages the sidecar injected, an expQueryInjected
	// for the wrapping BEGIN, and an expFanItem per item.
	exp      []expectation
	failed   bool // answered an ErrorResponse: nothing more until ReadyForQuery
	done     bool // answered ReadyForQuery for the request
	timed    bool // its query duration was observed
	broken   bool // the connection failed
	prepared bool // its part of a two-phase commit is prepared
	status   byte
	tx       *txLeg // the transaction's leg, in a crossTx request
	nowSet   bool   // brownie.now is queued on it (pintime.go)
	// skipHeader: the leg's next CopyData is a COPY TO header line the
	// first leg already sent.
	skipHeader bool
}

// fanItem is one client message of the request.
type fanItem struct {
	typ  byte         // 'B', 'D', 'E', 'C', 'Q', 'S' sent to the legs; '1', '3' answered by the sidecar; 'x' a sidecar error
	stmt bool         // Describe of a statement (answers 't' then 'T' or 'n')
	sent bool         // sent to the legs (not skipped after an error)
	err  *pgerr.Error // for 'x'
	// sql is a Query's text; copyIn: it is a COPY FROM STDIN (fancopy.go).
	sql    string
	copyIn bool
	// merge merges the answer's rows (merged.go); hidden: a Describe the
	// sidecar added for the merge, not answered to the client.
	merge  *mergeState
	hidden bool
}

// expFanItem marks, in a leg's expectations, the answer to the next item.
const expFanItem = expQueryInjected + 1

var errInFailedTx = pgerr.Errorf(pgerr.InFailedSQLTransaction, "current transaction is aborted, commands ignored until end of transaction block")

// errMixedPipeline refuses a pipeline mixing statements for one shard and
// statements spanning shards without a Sync between them.
func errMixedPipeline() *pgerr.Error {
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "a statement spanning shards and a statement for one shard cannot share a pipeline")
	e.Hint = "send Sync between them"
	return e
}

// fanOutMessage starts a fan-out request with a Query or Bind the router
// sent to several shards. A Query runs at once; a Bind opens a request
// that later messages join until Sync.
func (ss *session) fanOutMessage(typ byte, n int, body []byte, plan *fanPlan) error {
	f, err := ss.beginFanOut(plan)
	if err != nil {
		return ss.endFanOut(err)
	}
	if typ == 'Q' {
		sql, err := f.pinTime(string(body[:len(body)-1]))
		if err != nil {
			f.queueError(pgerr.From(err))
		}
		f.addQuery(sql)
		return ss.endFanOut(f.run())
	}
	ss.fan = f
	if err := f.bind(n, body, plan); err != nil {
		ss.fan = nil
		return ss.endFanOut(err)
	}
	return nil
}

// beginFanOut parks the session's idle upstream (if any) and takes a
// connection for every shard of plan, for a request outside any
// transaction (inside one, crossRequest serves it).
func (ss *session) beginFanOut(plan *fanPlan) (*fanOut, error) {
	f := &fanOut{ss: ss, plan: plan, start: time.Now()}
	ss.mu.Lock()
	for {
		for ss.internal {
			ss.cond.Wait()
		}
		if ss.ended {
			ss.mu.Unlock()
			return nil, errSessionEnded
		}
		if ss.up == nil {
			break
		}
		if ss.switchableLocked() {
			ss.parkLocked()
			continue
		}
		if ss.pending > 0 || len(ss.expect) > 0 {
			ss.cond.Wait()
			continue
		}
		ss.mu.Unlock()
		return nil, pgerr.Errorf(pgerr.InternalError, "a request spanning shards outside a transaction found the session in one")
	}
	ss.fanning = true
	ss.mu.Unlock()
	f.wrap = !plan.readOnly
	for _, t := range plan.targets {
		c, err := ss.takeConn(t)
		if err != nil {
			for _, l := range f.legs { // unused: still idle
				l.done, l.status = true, 'I'
			}
			f.release()
			return nil, ss.sessionError(err)
		}
		l := &fanLeg{c: c, u: c.Value}
		if f.wrap {
			l.u.unnamed = nil // a simple Query drops the server's unnamed statement
			l.out = wire.AppendQuery(l.out, "BEGIN")
			l.exp = append(l.exp, expectation{kind: expQueryInjected})
		}
		f.legs = append(f.legs, l)
	}
	ss.srv.metrics.FanOutShards.Observe(float64(len(f.legs)))
	ss.mu.Lock()
	for _, l := range f.legs {
		ss.fanUps = append(ss.fanUps, l.u)
	}
	ss.mu.Unlock()
	return f, nil
}

// endFanOut finishes the session's part of a request: the fan-out is
// over, and a draining session may now end.
func (ss *session) endFanOut(err error) error {
	ss.mu.Lock()
	ss.fanning = false
	ss.fanUps = ss.fanUps[:0]
	draining := ss.draining
	ss.mu.Unlock()
	if draining {
		ss.drain() // the drain that came during the fan-out: end now if idle
	}
	return err
}

// add queues item and, unless an earlier error stops the request, the
// bytes msg appends for each leg.
func (f *fanOut) add(it fanItem, msg func(*fanLeg)) {
	it.sent = !f.skipRest || it.typ == 'S'
	f.items = append(f.items, it)
	if !it.sent {
		return
	}
	for _, l := range f.legs {
		if it.typ == 'Q' {
			l.u.unnamed = nil // a simple Query drops the server's unnamed statement
		}
		msg(l) // may queue injected Parse and Close expectations first
		l.exp = append(l.exp, expectation{kind: expFanItem})
	}
}

// addQuery queues a simple Query; a COPY FROM STDIN is marked for its
// data phase.
func (f *fanOut) addQuery(sql string) {
	it := fanItem{typ: 'Q', sql: sql}
	if o, ok := isCopy(sql); ok && o.from {
		it.copyIn = true
	}
	sent, ms, err := f.planQueryMerge(sql)
	if err != nil {
		f.queueError(pgerr.From(err))
	}
	it.merge = ms
	f.add(it, func(l *fanLeg) { l.out = wire.AppendQuery(l.out, sent) })
}

// isCopy parses sql when it starts with COPY.
func isCopy(sql string) (copyOptions, bool) {
	t := strings.TrimLeft(sql, " \t\r\n")
	if len(t) < 4 || !strings.EqualFold(t[:4], "copy") {
		return copyOptions{}, false
	}
	return parseCopy(sql)
}

// queueError queues a sidecar error at this point of the request: later
// messages are not sent.
func (f *fanOut) queueError(e *pgerr.Error) {
	f.items = append(f.items, fanItem{typ: 'x', err: e})
	f.skipRest = true
}

// message handles a client message inside an extended-protocol fan-out
// request (after its first Bind, up to Sync).
func (f *fanOut) message(typ byte, n int) error {
	ss := f.ss
	var body []byte
	if typ != 'S' && typ != 'H' {
		var err error
		if body, err = ss.boundedBody(typ, n); err != nil {
			return err
		}
	}
	switch typ {
	case 'P':
		if err := ss.defineFrom(body); err != nil {
			return err
		}
		f.items = append(f.items, fanItem{typ: '1'})
	case 'B':
		if f.skipRest {
			return nil // the server would skip it: nothing to answer
		}
		if _, name, _, err := bindHeader(body); err == nil && ss.stmtNamed(name) == nil {
			return f.bind(n, body, f.plan) // unknown statement: the server says so
		}
		r := ss.routeMessage('B', n, body, true, nil, false)
		if r.refuse == nil && f.xt != nil {
			// In a transaction spanning shards, a statement joins the
			// request when it needs the same legs.
			shards, plan := ss.crossShards(r)
			if !slices.Equal(shards, f.shards()) {
				f.queueError(errMixedPipeline())
				return nil
			}
			return f.bind(n, body, plan)
		}
		switch {
		case r.refuse != nil:
			f.queueError(r.refuse)
		case r.fan == nil || !f.plan.joins(r.fan):
			f.queueError(errMixedPipeline())
		default:
			return f.bind(n, body, r.fan)
		}
	case 'D':
		if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Describe message")
		}
		if body[0] == 'P' {
			if f.cur != nil {
				f.cur.hasDescribed = true
			}
			f.add(fanItem{typ: 'D', merge: f.cur}, func(l *fanLeg) { l.out = append(wire.AppendHeader(l.out, 'D', n), body...) })
			return nil
		}
		name, _, err := cstr(body[1:])
		if err != nil {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Describe message")
		}
		def := ss.stmtNamed(name)
		f.add(fanItem{typ: 'D', stmt: true}, func(l *fanLeg) {
			if def == nil { // unknown: let the server say so
				l.out = append(wire.AppendHeader(l.out, 'D', n), body...)
				return
			}
			sname := f.prepare(l, def, name == "")
			l.out = wire.AppendHeader(l.out, 'D', 1+len(sname)+1)
			l.out = append(append(append(l.out, 'S'), sname...), 0)
		})
	case 'E':
		if len(body) >= 4 && binary.BigEndian.Uint32(body[len(body)-4:]) != 0 && !f.skipRest {
			e := pgerr.Errorf(pgerr.FeatureNotSupported, "fetching a statement spanning shards in batches (Execute with a row limit) is not supported")
			e.Hint = "fetch all rows at once, or add the team key (team_id) to the statement"
			f.queueError(e)
			return nil
		}
		if ms := f.cur; ms != nil && !ms.hasDescribed && !f.skipRest {
			// The merge needs the shards' RowDescription: ask for it.
			ms.hasDescribed = true
			f.add(fanItem{typ: 'D', merge: ms, hidden: true}, func(l *fanLeg) { l.out = describePortal(l.out, body) })
		}
		f.add(fanItem{typ: 'E', merge: f.cur}, func(l *fanLeg) { l.out = append(wire.AppendHeader(l.out, 'E', n), body...) })
	case 'C':
		if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Close message")
		}
		if body[0] == 'S' {
			if err := ss.undefine(body); err != nil {
				return err
			}
			f.items = append(f.items, fanItem{typ: '3'})
			return nil
		}
		f.add(fanItem{typ: 'C'}, func(l *fanLeg) { l.out = append(wire.AppendHeader(l.out, 'C', n), body...) })
	case 'H':
		return f.flush(false)
	case 'S':
		f.add(fanItem{typ: 'S'}, func(l *fanLeg) { l.out = append(l.out, 'S', 0, 0, 0, 4) })
		ss.fan = nil
		return ss.endFanOut(f.run())
	default:
		return pgerr.Fatalf(pgerr.ProtocolViolation, "unexpected message type %q inside an extended-protocol request; send Sync first", typ)
	}
	return nil
}

// boundedBody reads the body of a client message the session goroutine
// answers or rewrites itself (inside requests spanning shards, or local
// ones): bodies larger than maxAnalyzed end the session with 54000.
func (ss *session) boundedBody(typ byte, n int) ([]byte, error) {
	if n > maxAnalyzed {
		return nil, pgerr.Fatalf(pgerr.ProgramLimitExceeded, "a %q message of %d bytes inside a request spanning shards is too large", typ, n)
	}
	return ss.cr.Body()
}

// shards names the request's shards, in its legs' order.
func (f *fanOut) shards() []string {
	names := make([]string, len(f.legs))
	for i, l := range f.legs {
		names[i] = l.u.target.Shard
	}
	return names
}

// stmtNamed returns the client's statement name ("" for the unnamed one).
func (ss *session) stmtNamed(name string) *stmtDef {
	if name == "" {
		return ss.unnamed
	}
	return ss.stmts[name]
}

// bind queues a Bind, renamed for each leg's prepared statement (prepared
// first where the leg lacks it).
func (f *fanOut) bind(n int, body []byte, plan *fanPlan) error {
	ss := f.ss
	portal, name, rest, err := bindHeader(body)
	if err != nil {
		return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Bind message")
	}
	if !plan.readOnly {
		f.plan.readOnly = false
	}
	def := ss.stmtNamed(name)
	if def != nil {
		if _, ok := isCopy(def.query); ok {
			e := pgerr.Errorf(pgerr.FeatureNotSupported, "COPY spanning shards with the extended protocol is not supported")
			e.Hint = "send COPY as a simple query"
			ss.srv.metrics.Refused.WithLabelValues("copy").Inc()
			f.queueError(e)
			return nil
		}
	}
	if def != nil && f.pinning() {
		var err error
		if def, err = f.pinnedDef(def); err != nil {
			f.queueError(pgerr.From(err))
			return nil
		}
	}
	f.cur = nil
	var formats []int16
	if def != nil {
		mdef, fm, ms, err := f.mergedBind(def, body)
		if err != nil {
			f.queueError(pgerr.From(err))
			return nil
		}
		def, formats, f.cur = mdef, fm, ms
	}
	f.add(fanItem{typ: 'B'}, func(l *fanLeg) {
		if def == nil { // unknown: let the server say so
			l.out = append(wire.AppendHeader(l.out, 'B', n), body...)
			return
		}
		sname := f.prepare(l, def, name == "")
		if f.cur != nil {
			l.out, _ = appendBind(l.out, body, sname, formats) // body decoded in mergedBind
			return
		}
		l.out = wire.AppendHeader(l.out, 'B', n-len(name)+len(sname))
		l.out = append(append(l.out, portal...), 0)
		l.out = append(append(l.out, sname...), 0)
		l.out = append(l.out, body[rest:]...)
	})
	return nil
}

// prepare appends to l.out what prepares def on the leg's upstream when it
// lacks it, and returns the server-side name. The injected messages'
// expectations go before the item's marker.
func (f *fanOut) prepare(l *fanLeg, def *stmtDef, unnamed bool) string {
	ss := f.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out, sname := ss.ensurePreparedLocked(&l.exp, l.u, def, unnamed)
	l.out = append(l.out, out...)
	return sname
}

// flush sends what is queued (with a Flush unless the request ends with
// Sync) and reads the answers to every queued item.
func (f *fanOut) flush(sync bool) error {
	type result struct {
		l   *fanLeg
		err error
	}
	var big []chan result
	for _, l := range f.legs {
		if !sync {
			l.out = append(l.out, 'H', 0, 0, 0, 4)
		}
		out := l.out
		l.out = nil
		if len(out) <= 32<<10 {
			if err := f.write(l, out); err != nil {
				return err
			}
			continue
		}
		// A large request is written while the answers are read, so a
		// server blocked writing answers to a full socket cannot block the
		// write for ever.
		ch := make(chan result, 1)
		big = append(big, ch)
		go func(u *upstream) {
			_, err := u.conn.Write(out)
			ch <- result{l, err}
		}(l.u)
		f.ss.srv.metrics.ToUpstream.Add(float64(len(out)))
	}
	err := f.answerAll()
	for _, ch := range big {
		if r := <-ch; r.err != nil && err == nil {
			err = f.legLost(r.l, r.err)
		}
	}
	return err
}

// write sends b on the leg's connection.
func (f *fanOut) write(l *fanLeg, b []byte) error {
	_, err := l.u.conn.Write(b)
	f.ss.srv.metrics.ToUpstream.Add(float64(len(b)))
	if err != nil {
		return f.legLost(l, err)
	}
	return nil
}

// answerAll reads and merges the answers to every queued item.
func (f *fanOut) answerAll() error {
	for len(f.items) > 0 {
		it := f.items[0]
		f.items = f.items[1:]
		if err := f.answer(it); err != nil {
			return err
		}
	}
	f.flushClient()
	return nil
}

// run sends the whole request (it ends with Query or Sync), reads and
// merges the answers, commits or rolls back a wrapped write, answers
// ReadyForQuery and gives the connections back.
func (f *fanOut) run() (err error) {
	ss := f.ss
	kind := "read"
	if !f.plan.readOnly {
		kind = "write"
	}
	if err = f.flush(true); err == nil && f.wrap {
		err = f.commit()
	}
	if err == nil {
		f.settle()
	}
	outcome := "ok"
	if f.failed || err != nil {
		outcome = "error"
	}
	ss.srv.metrics.FanOuts.WithLabelValues(kind, outcome).Inc()
	if err != nil {
		f.destroy()
		if errors.Is(err, errSessionEnded) {
			return err
		}
		return ss.sessionError(err)
	}
	return nil
}

// settle answers ReadyForQuery and gives the legs back: connections of
// their own to their pools (or parked, for a session with state); a
// transaction's legs stay with it, failed when the request failed.
func (f *fanOut) settle() {
	ss := f.ss
	status := byte('I')
	if f.xt != nil {
		if f.failed {
			f.xt.failed = true
		} else if !f.plan.readOnly {
			for _, l := range f.legs {
				l.tx.wrote = true
			}
		}
		status = f.xt.status()
		ss.mu.Lock()
		ss.txStatus = status
		ss.mu.Unlock()
	}
	if !f.clientGone {
		w := &ss.cw
		w.mu.Lock()
		err := w.writeReadyLocked(status, true)
		w.mu.Unlock()
		if err != nil {
			f.clientGone = true
		}
	}
	f.release()
}

// release gives back every leg's connection but a transaction's.
func (f *fanOut) release() {
	ss := f.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.waitCancelsLocked() // a cancel being delivered holds the legs
	for _, l := range f.legs {
		switch {
		case l.c == nil || l.tx != nil: // the transaction's legs stay with it
		case l.done && l.status == 'I' && !l.broken:
			ss.keepLocked(l.c)
		default:
			l.c.Destroy()
		}
		l.c = nil
	}
}

// destroy closes every connection of a request that cannot finish (an
// upstream broke): their transactions roll back.
func (f *fanOut) destroy() {
	if xt := f.xt; xt != nil && f.ss.xt == xt {
		for _, l := range xt.legs {
			l.c.Destroy()
		}
		xt.legs = nil
		f.ss.mu.Lock()
		f.ss.xt, f.ss.crossing = nil, false
		f.ss.txBegin, f.ss.txReplay = nil, nil
		f.ss.mu.Unlock()
	}
	for _, l := range f.legs {
		if l.tx != nil {
			l.c = nil
			continue
		}
		if l.c != nil {
			l.c.Destroy()
			l.c = nil
		}
	}
	f.ss.mu.Lock()
	f.ss.txStatus = 'I'
	f.ss.mu.Unlock()
}

// legLost reports a leg's broken connection: the request cannot finish,
// and the session ends with 08006.
func (f *fanOut) legLost(l *fanLeg, err error) error {
	l.broken = true
	return f.ss.lostError(l.u, err)
}
