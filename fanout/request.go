package fanout

import (
	"encoding/binary"
	"strings"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/sqltext"
	"github.com/brownie/brownie-sidecar/internal/wire"
)

// Request is one client request — a simple Query, or the
// extended-protocol messages from a Bind up to Sync — run on several
// shards at once. The session goroutine owns it and does all its I/O
// synchronously while the session relays nothing else: it sends the
// request to every leg, then reads the legs' answers message by message,
// leg after leg in shard-map order, streaming rows to the client as they
// come and merging the rest: one RowDescription, one command tag counting
// every shard's rows, the first error.
//
// A write outside any transaction runs on every leg inside its own BEGIN
// and is committed, in two phases (commit.go), only when every leg
// succeeded; else it is rolled back everywhere. Inside a transaction
// spanning shards the request runs on the transaction's legs (see Tx),
// which it leaves open.
type Request struct {
	env   *Env
	plan  *Plan
	legs  []*leg
	items []item // messages whose answers are still to read, in order
	wrap  bool   // a write outside a transaction: BEGIN … COMMIT on every leg
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
	xt *Tx
	// cur is the merge of the statement last bound in the request (nil:
	// its rows are concatenated).
	cur *mergeState
}

// leg is the request's connection to one shard.
type leg struct {
	c   Conn
	out []byte // messages to send at the next flush
	// exp lists what the leg answers before each item: completions of
	// Parse and Close messages the sidecar injected, an expQuery for an
	// injected simple query (the wrapping BEGIN, SET LOCAL brownie.now, a
	// transaction leg's opening), and an expItem per item.
	exp      []expectation
	failed   bool // answered an ErrorResponse: nothing more until ReadyForQuery
	done     bool // answered ReadyForQuery for the request
	timed    bool // its query duration was observed
	broken   bool // the connection failed
	prepared bool // its part of a two-phase commit is prepared
	status   byte
	tx       *txLeg // the transaction's leg, in a Tx request
	nowSet   bool   // brownie.now is queued on it (pintime.go)
	// skipHeader: the leg's next CopyData is a COPY TO header line the
	// first leg already sent.
	skipHeader bool
}

// expKind is what a leg answers before the answer to its next item.
type expKind uint8

const (
	expParse expKind = iota // injected Parse: swallow ParseComplete
	expClose                // injected Close (cache eviction): swallow CloseComplete
	expQuery                // injected simple query: swallow its CommandComplete and ReadyForQuery
	expItem                 // the answer to the next item
)

type expectation struct {
	kind expKind
	key  string // expParse: the statement's key ("" for the unnamed statement)
}

// item is one client message of the request.
type item struct {
	typ  byte         // 'B', 'D', 'E', 'C', 'Q', 'S' sent to the legs; '1', '3' answered by the sidecar; 'x' a sidecar error
	stmt bool         // Describe of a statement (answers 't' then 'T' or 'n')
	sent bool         // sent to the legs (not skipped after an error)
	err  *pgerr.Error // for 'x'
	// sql is a Query's text; copyIn: it is a COPY FROM STDIN (copy.go).
	sql    string
	copyIn bool
	// merge merges the answer's rows (merged.go); hidden: a Describe the
	// sidecar added for the merge, not answered to the client.
	merge  *mergeState
	hidden bool
}

// ErrInFailedTx answers a statement of a failed transaction.
var ErrInFailedTx = pgerr.Errorf(pgerr.InFailedSQLTransaction, "current transaction is aborted, commands ignored until end of transaction block")

// ErrMixedPipeline refuses a pipeline mixing statements for one shard and
// statements spanning shards without a Sync between them.
func ErrMixedPipeline() *pgerr.Error {
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "a statement spanning shards and a statement for one shard cannot share a pipeline")
	e.Hint = "send Sync between them"
	return e
}

// New starts a request for plan outside any transaction on conns, one per
// target of plan, in order (taken by the session, now owned by the
// request). A write is wrapped in BEGIN on every leg.
func New(env *Env, plan *Plan, conns []Conn) *Request {
	f := &Request{env: env, plan: plan, start: time.Now(), wrap: !plan.ReadOnly}
	for _, c := range conns {
		l := &leg{c: c}
		if f.wrap {
			f.injectQuery(l, "BEGIN")
		}
		f.legs = append(f.legs, l)
	}
	env.Deps.Metrics.FanOutShards.Observe(float64(len(f.legs)))
	env.Session.Running(conns)
	return f
}

// injectQuery queues a simple query on l whose answer the client does
// not see (an error fails the leg).
func (f *Request) injectQuery(l *leg, sql string) {
	l.c.Parsed("", false) // a simple Query drops the server's unnamed statement
	l.out = wire.AppendQuery(l.out, sql)
	l.exp = append(l.exp, expectation{kind: expQuery})
}

// Plan is the request's plan.
func (f *Request) Plan() *Plan { return f.plan }

// Tx is the transaction spanning shards the request is a statement of,
// or nil.
func (f *Request) Tx() *Tx { return f.xt }

// conns are the request's connections, in its legs' order.
func (f *Request) conns() []Conn {
	conns := make([]Conn, len(f.legs))
	for i, l := range f.legs {
		conns[i] = l.c
	}
	return conns
}

// Shards names the request's shards, in its legs' order.
func (f *Request) Shards() []string {
	names := make([]string, len(f.legs))
	for i, l := range f.legs {
		names[i] = l.c.Target().Shard
	}
	return names
}

// add queues it and, unless an earlier error stops the request, the
// bytes msg appends for each leg.
func (f *Request) add(it item, msg func(*leg)) {
	it.sent = !f.skipRest || it.typ == 'S'
	f.items = append(f.items, it)
	if !it.sent {
		return
	}
	for _, l := range f.legs {
		if it.typ == 'Q' {
			l.c.Parsed("", false) // a simple Query drops the server's unnamed statement
		}
		msg(l) // may queue injected Parse and Close expectations first
		l.exp = append(l.exp, expectation{kind: expItem})
	}
}

// Query queues a simple Query: rewritten to pin the time of a write to
// replicated tables (pintime.go), merged when it is a read that needs it
// (merged.go), its rows split by key when it is a COPY FROM STDIN into a
// sharded table (copy.go). Run sends it.
func (f *Request) Query(sql string) {
	sql, err := f.pinTime(sql)
	if err != nil {
		f.Fail(pgerr.From(err))
	}
	f.addQuery(sql)
}

// addQuery queues a simple Query; a COPY FROM STDIN is marked for its
// data phase.
func (f *Request) addQuery(sql string) {
	it := item{typ: 'Q', sql: sql}
	if o, ok := isCopy(sql); ok && o.from {
		it.copyIn = true
	}
	sent, ms, err := f.planQueryMerge(sql)
	if err != nil {
		f.Fail(pgerr.From(err))
	}
	it.merge = ms
	f.add(it, func(l *leg) { l.out = wire.AppendQuery(l.out, sent) })
}

// isCopy parses sql when it starts with COPY.
func isCopy(sql string) (copyOptions, bool) {
	t := sql[sqltext.SkipSpace(sql, 0):]
	if len(t) < 4 || !strings.EqualFold(t[:4], "copy") {
		return copyOptions{}, false
	}
	return parseCopy(sql)
}

// Fail queues a sidecar error at this point of the request: later
// messages are not sent.
func (f *Request) Fail(e *pgerr.Error) {
	f.items = append(f.items, item{typ: 'x', err: e})
	f.skipRest = true
}

// Failing reports whether an error queued in the request stops its later
// messages (the server would skip them up to Sync).
func (f *Request) Failing() bool { return f.skipRest }

// Answered queues, in order, the answer to a message the session answers
// itself: ParseComplete ('1') for a Parse, CloseComplete ('3') for the
// Close of a statement.
func (f *Request) Answered(typ byte) {
	f.items = append(f.items, item{typ: typ})
}

// DescribePortal queues a Describe of a portal (body as the client sent
// it, n bytes).
func (f *Request) DescribePortal(n int, body []byte) {
	if f.cur != nil {
		f.cur.hasDescribed = true
	}
	f.add(item{typ: 'D', merge: f.cur}, func(l *leg) { l.out = append(wire.AppendHeader(l.out, 'D', n), body...) })
}

// DescribeStmt queues a Describe of the client's statement def (nil:
// unknown, the server says so), prepared first where a leg lacks it.
func (f *Request) DescribeStmt(n int, body []byte, def Stmt, unnamed bool) {
	f.add(item{typ: 'D', stmt: true}, func(l *leg) {
		if def == nil {
			l.out = append(wire.AppendHeader(l.out, 'D', n), body...)
			return
		}
		sname := f.prepare(l, def, unnamed)
		l.out = wire.AppendHeader(l.out, 'D', 1+len(sname)+1)
		l.out = append(append(append(l.out, 'S'), sname...), 0)
	})
}

// Execute queues an Execute (body as the client sent it, n bytes). A row
// limit is refused: the shards' rows cannot be fetched in batches.
func (f *Request) Execute(n int, body []byte) {
	if len(body) >= 4 && binary.BigEndian.Uint32(body[len(body)-4:]) != 0 && !f.skipRest {
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "fetching a statement spanning shards in batches (Execute with a row limit) is not supported")
		e.Hint = "fetch all rows at once, or add the team key (team_id) to the statement"
		f.Fail(e)
		return
	}
	if ms := f.cur; ms != nil && !ms.hasDescribed && !f.skipRest {
		// The merge needs the shards' RowDescription: ask for it.
		ms.hasDescribed = true
		f.add(item{typ: 'D', merge: ms, hidden: true}, func(l *leg) { l.out = describePortal(l.out, body) })
	}
	f.add(item{typ: 'E', merge: f.cur}, func(l *leg) { l.out = append(wire.AppendHeader(l.out, 'E', n), body...) })
}

// ClosePortal queues a Close of a portal (body as the client sent it, n
// bytes).
func (f *Request) ClosePortal(n int, body []byte) {
	f.add(item{typ: 'C'}, func(l *leg) { l.out = append(wire.AppendHeader(l.out, 'C', n), body...) })
}

// Flush sends what is queued with a Flush and answers it (the client's
// Flush).
func (f *Request) Flush() error { return f.flush(false) }

// Sync queues the Sync that ends the request and runs it (see Run).
func (f *Request) Sync() error {
	f.add(item{typ: 'S'}, func(l *leg) { l.out = append(l.out, 'S', 0, 0, 0, 4) })
	return f.Run()
}

// bindHeader splits the start of a Bind body: portal and statement names
// and the offset of the rest.
func bindHeader(body []byte) (portal, stmt string, rest int, ok bool) {
	portal, r, ok := wire.CString(body)
	if !ok {
		return "", "", 0, false
	}
	stmt, r, ok = wire.CString(r)
	if !ok {
		return "", "", 0, false
	}
	return portal, stmt, len(body) - len(r), true
}

// Bind queues a Bind (body as the client sent it, n bytes) of def, the
// client's statement it names (nil: unknown, the server says so), planned
// as plan: renamed for each leg's prepared statement (prepared first
// where the leg lacks it), rewritten for a merge or to pin the time of a
// replicated write.
func (f *Request) Bind(n int, body []byte, plan *Plan, def Stmt) error {
	portal, name, rest, ok := bindHeader(body)
	if !ok {
		return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Bind message")
	}
	if !plan.ReadOnly {
		f.plan.ReadOnly = false
	}
	if def != nil {
		if _, ok := isCopy(def.SQL()); ok {
			e := pgerr.Errorf(pgerr.FeatureNotSupported, "COPY spanning shards with the extended protocol is not supported")
			e.Hint = "send COPY as a simple query"
			f.env.Deps.Metrics.Refused.WithLabelValues("copy").Inc()
			f.Fail(e)
			return nil
		}
	}
	if def != nil && f.pinning() {
		var err error
		if def, err = f.pinnedDef(def); err != nil {
			f.Fail(pgerr.From(err))
			return nil
		}
	}
	f.cur = nil
	var formats []int16
	if def != nil {
		mdef, fm, ms, err := f.mergedBind(def, body)
		if err != nil {
			f.Fail(pgerr.From(err))
			return nil
		}
		def, formats, f.cur = mdef, fm, ms
	}
	f.add(item{typ: 'B'}, func(l *leg) {
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

// prepare appends to l.out what prepares def on the leg's connection when
// it lacks it, and returns the server-side name. The injected messages'
// expectations go before the item's marker.
func (f *Request) prepare(l *leg, def Stmt, unnamed bool) string {
	out, sname, injected := l.c.Prepare(def, unnamed)
	for _, in := range injected {
		if in.Close {
			l.exp = append(l.exp, expectation{kind: expClose})
		} else {
			l.exp = append(l.exp, expectation{kind: expParse, key: in.Key})
		}
	}
	l.out = append(l.out, out...)
	return sname
}

// flush sends what is queued (with a Flush unless the request ends with
// Sync) and reads the answers to every queued item.
func (f *Request) flush(sync bool) error {
	type result struct {
		l   *leg
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
		go func(l *leg) {
			_, err := l.c.Write(out)
			ch <- result{l, err}
		}(l)
		f.env.Deps.Metrics.ToUpstream.Add(float64(len(out)))
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
func (f *Request) write(l *leg, b []byte) error {
	_, err := l.c.Write(b)
	f.env.Deps.Metrics.ToUpstream.Add(float64(len(b)))
	if err != nil {
		return f.legLost(l, err)
	}
	return nil
}

// answerAll reads and merges the answers to every queued item.
func (f *Request) answerAll() error {
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

// Run sends the whole request (it ends with Query or Sync), reads and
// merges the answers, commits or rolls back a wrapped write, answers
// ReadyForQuery and gives the connections back. An error means the
// request could not finish (a leg was lost): the caller destroys it (see
// Destroy) and ends the session.
func (f *Request) Run() (err error) {
	kind := "read"
	if !f.plan.ReadOnly {
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
	f.env.Deps.Metrics.FanOuts.WithLabelValues(kind, outcome).Inc()
	return err
}

// Status is the transaction status the client was last told: the
// transaction's, or idle outside one.
func (f *Request) Status() byte {
	if f.xt != nil && !f.xt.ended {
		return f.xt.Status()
	}
	return 'I'
}

// settle answers ReadyForQuery and gives the legs back: connections of
// their own to the session; a transaction's legs stay with it, failed
// when the request failed.
func (f *Request) settle() {
	if f.xt != nil {
		if f.failed {
			f.xt.failed = true
		} else if !f.plan.ReadOnly {
			for _, l := range f.legs {
				l.tx.wrote = true
			}
		}
	}
	if !f.clientGone {
		if err := f.env.Client.Ready(f.Status()); err != nil {
			f.clientGone = true
		}
	}
	f.release()
}

// release gives back every leg's connection but a transaction's.
func (f *Request) release() {
	var idle, broken []Conn
	for _, l := range f.legs {
		switch {
		case l.c == nil || l.tx != nil: // the transaction's legs stay with it
			continue
		case l.done && l.status == 'I' && !l.broken:
			idle = append(idle, l.c)
		default:
			broken = append(broken, l.c)
		}
		l.c = nil
	}
	f.env.Session.GiveBack(idle, broken)
}

// Destroy closes every connection of a request that cannot finish (a
// leg broke): their transactions roll back, the transaction spanning
// shards the request was a statement of included (it ends: see
// Tx.Ended).
func (f *Request) Destroy() {
	if xt := f.xt; xt != nil && !xt.ended {
		for _, l := range xt.legs {
			l.c.Destroy()
		}
		xt.legs = nil
		xt.ended = true
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
}

// legLost reports a leg's broken connection: the request cannot finish,
// and the session ends with 08006.
func (f *Request) legLost(l *leg, err error) error {
	l.broken = true
	return f.env.Session.Lost(l.c, err)
}

// MaxBody bounds the bodies of client messages a request reads whole
// (COPY data); the session bounds the bodies it reads for a request the
// same way.
const MaxBody = 1 << 20

// largeMessage is the size above which a leg's DataRow is streamed to
// the client rather than buffered.
const largeMessage = 64 << 10
