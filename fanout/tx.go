package fanout

import (
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/router"
)

// Tx is a client transaction spanning shards: one leg (a connection
// inside the transaction) per shard its statements needed, opened as they
// need them. From the statement that made the transaction span shards
// until it ends, the session serves each of its requests (a Query, or the
// messages from a Bind up to Sync) as a Request on the transaction's legs
// (see Tx.Request), synchronously, without relaying anything else.
//
// The session decides when a transaction becomes a Tx and which shards a
// statement needs; a Tx holds its legs, runs statements on them, and ends
// with Commit, Rollback or Abandon (or Request.Destroy when a leg is
// lost). Owned by the session goroutine.
type Tx struct {
	env  *Env
	legs []*txLeg // in the order opened
	// begin opened the transaction (BEGIN with its options, hint-only SET
	// LOCALs); replay lists what ran since that a leg opened later must
	// also run (SET LOCAL, SET TRANSACTION, SAVEPOINT), in order.
	begin  []string
	replay []TxStmt
	// failed: a statement failed; until ROLLBACK (or ROLLBACK TO a
	// savepoint) every statement gets 25P02, and COMMIT rolls back.
	failed bool
	// ended: a lost leg ended the transaction (Request.Destroy); its
	// connections are closed.
	ended bool
	// now is the transaction's brownie.now, set on its legs at its first
	// write to replicated tables (pintime.go); "" until then.
	now string
}

// txLeg is the transaction's connection to one shard's primary.
type txLeg struct {
	c     Conn
	shard string
	wrote bool // a statement that may write ran on it
	now   bool // brownie.now is set on it (pintime.go)
	// opening begins the transaction on the leg: sent ahead of its first
	// request, then "".
	opening string
}

// TxStmt is a statement of the transaction a leg opened later replays: a
// local setting, or a SAVEPOINT.
type TxStmt struct {
	Savepoint string // the savepoint's name; "" for a local setting
	SQL       string
}

// NewTx returns a transaction spanning shards, with no leg yet, that
// began with the statements begin (BEGIN with its options) and has run
// replay since.
func NewTx(env *Env, begin []string, replay []TxStmt) *Tx {
	if len(begin) == 0 {
		begin = []string{"BEGIN"}
	}
	return &Tx{env: env, begin: begin, replay: replay}
}

// Join makes c, a connection to a shard's primary inside the client's
// transaction, the transaction's first leg; wrote says a statement that
// may write ran on it. Its failed transaction fails the Tx.
func (xt *Tx) Join(c Conn, wrote bool) {
	xt.legs = append(xt.legs, &txLeg{c: c, shard: c.Target().Shard, wrote: wrote})
	xt.failed = c.TxStatus() == 'E'
}

// Status is the transaction status the client sees.
func (xt *Tx) Status() byte {
	if xt.failed {
		return 'E'
	}
	return 'T'
}

// Failed reports whether a statement of the transaction failed.
func (xt *Tx) Failed() bool { return xt.failed }

// Fail fails the transaction, as a failed statement fails it in
// Postgres: until ROLLBACK every statement gets 25P02.
func (xt *Tx) Fail() { xt.failed = true }

// Ended reports whether the transaction ended because a leg was lost
// (Request.Destroy).
func (xt *Tx) Ended() bool { return xt.ended }

// Conns are the transaction's legs' connections, first opened first.
func (xt *Tx) Conns() []Conn {
	conns := make([]Conn, len(xt.legs))
	for i, l := range xt.legs {
		conns[i] = l.c
	}
	return conns
}

// leg returns the transaction's leg on shard, or nil.
func (xt *Tx) leg(shard string) *txLeg {
	for _, l := range xt.legs {
		if l.shard == shard {
			return l
		}
	}
	return nil
}

// Shards names the shards the transaction has legs on, first opened
// first.
func (xt *Tx) Shards() []string {
	names := make([]string, len(xt.legs))
	for i, l := range xt.legs {
		names[i] = l.shard
	}
	return names
}

// openLeg adds a leg on shard to the transaction: a connection to the
// shard's primary with the client's settings. The statements that begin
// the transaction there as the client began it (BEGIN with its options,
// local settings, savepoints) are not run yet: Request sends them ahead
// of the leg's first request, in the same write.
func (xt *Tx) openLeg(shard string) (*txLeg, error) {
	t, ok := xt.env.Deps.Primary(shard)
	if !ok {
		return nil, pgerr.Errorf(pgerr.ServerRejected, "shard %q is not in the shard map", shard)
	}
	c, err := xt.env.Session.Take(t)
	if err != nil {
		return nil, err
	}
	q := slices.Clone(xt.begin)
	for _, s := range xt.replay {
		q = append(q, s.SQL)
	}
	l := &txLeg{c: c, shard: shard, opening: strings.Join(q, ";\n")}
	xt.legs = append(xt.legs, l)
	return l, nil
}

// Request prepares a request on the transaction's legs for shards
// (opened as needed, in map order), planned as plan. An error (a leg
// could not be opened) leaves the transaction's state unknown: the
// session abandons it.
func (xt *Tx) Request(shards []string, plan *Plan) (*Request, error) {
	f := &Request{env: xt.env, plan: plan, xt: xt, start: time.Now()}
	for _, shard := range xt.env.Deps.Router.Map().ShardNames() {
		if !slices.Contains(shards, shard) {
			continue
		}
		l := xt.leg(shard)
		if l == nil {
			var err error
			if l, err = xt.openLeg(shard); err != nil {
				return nil, err
			}
		}
		fl := &leg{c: l.c, tx: l}
		if l.opening != "" {
			// The leg's transaction begins in the request's first write;
			// its answers are swallowed, and an error fails the leg.
			fl.out = wire.AppendQuery(fl.out, l.opening)
			fl.exp = append(fl.exp, expectation{kind: expQuery})
			l.opening = ""
		}
		f.legs = append(f.legs, fl)
	}
	if len(f.legs) > 1 {
		xt.env.Deps.Metrics.FanOutShards.Observe(float64(len(f.legs)))
	}
	xt.env.Session.Running(f.conns())
	return f, nil
}

// Control runs a settings or savepoint statement of the transaction on
// every leg of f (a request made by Request) and answers the client with
// the first leg's CommandComplete or ErrorResponse (not ReadyForQuery).
// When it succeeded everywhere record updates the statements legs opened
// later replay; ROLLBACK TO (rollbackTo) clears the transaction's
// failure. It reports whether the statement failed; an error means a leg
// was lost (the caller destroys f).
func (f *Request) Control(sql string, rollbackTo bool, record func([]TxStmt) []TxStmt) (failed bool, err error) {
	xt := f.xt
	f.add(item{typ: 'Q'}, func(l *leg) { l.out = wire.AppendQuery(l.out, sql) })
	if err := f.flush(true); err != nil {
		return true, err
	}
	switch {
	case f.failed:
		xt.failed = true
	case rollbackTo:
		xt.failed = false
	}
	if !f.failed {
		xt.replay = record(xt.replay)
		if xt.now != "" && !slices.ContainsFunc(xt.replay, func(s TxStmt) bool { return strings.HasPrefix(s.SQL, "SET LOCAL "+router.NowSetting) }) {
			// Rolled back to before the first write to replicated tables:
			// the next one sets brownie.now again.
			xt.now = ""
			for _, l := range xt.legs {
				l.now = false
			}
		}
	}
	f.release()
	return f.failed, nil
}

// Commit commits the transaction and answers the client with COMMIT or
// the error (not ReadyForQuery): a failed one rolls back; legs that only
// read commit first; then the one leg that wrote commits alone, or
// several commit in two phases (commit.go). It reports whether the
// transaction rolled back; an error means a leg was lost and the outcome
// may be unknown (the session abandons the transaction and ends). The
// legs stay with the transaction for the session to give back.
func (xt *Tx) Commit() (failed bool, err error) {
	if xt.failed {
		return false, xt.Rollback()
	}
	f := xt.legsRequest()
	var readers, writers []*leg
	for _, l := range f.legs {
		if l.tx.wrote {
			writers = append(writers, l)
		} else {
			readers = append(readers, l)
		}
	}
	err = f.each(readers, func(*leg) string { return "COMMIT" })
	outcome := "committed"
	switch {
	case err != nil:
	case len(writers) <= 1:
		if err = f.each(writers, func(*leg) string { return "COMMIT" }); err == nil && f.firstErr != nil {
			f.sendError(nil)
		}
	default:
		wf := &Request{env: xt.env, plan: f.plan, xt: xt, start: f.start, legs: writers}
		err = wf.commitTwoPhase()
		f.failed, f.clientGone = wf.failed, wf.clientGone
	}
	if err == nil && f.failed {
		outcome = "rolled_back"
	}
	if err != nil {
		outcome = "unknown"
	}
	xt.env.Deps.Metrics.CrossShardTx.WithLabelValues(outcome, legCount(len(xt.legs))).Inc()
	if err != nil {
		return true, err
	}
	if !f.failed {
		now := time.Now()
		for _, l := range writers {
			xt.env.Session.Wrote(l.tx.shard, now)
		}
		f.emit('C', []byte("COMMIT\x00"))
	}
	return f.failed, nil
}

// Rollback rolls the transaction back on every leg and answers the client
// with ROLLBACK (not ReadyForQuery). An error means a leg was lost (the
// session abandons the transaction and ends). The legs stay with the
// transaction for the session to give back.
func (xt *Tx) Rollback() error {
	f := xt.legsRequest()
	if err := f.each(f.legs, func(*leg) string { return "ROLLBACK" }); err != nil {
		return err
	}
	xt.env.Deps.Metrics.CrossShardTx.WithLabelValues("rolled_back", legCount(len(xt.legs))).Inc()
	f.failed = false
	f.emit('C', []byte("ROLLBACK\x00"))
	return nil
}

// legsRequest is a request on every leg of the transaction, in map order,
// for its end.
func (xt *Tx) legsRequest() *Request {
	f := &Request{env: xt.env, plan: &Plan{}, xt: xt, start: time.Now()}
	for _, shard := range xt.env.Deps.Router.Map().ShardNames() {
		if l := xt.leg(shard); l != nil {
			f.legs = append(f.legs, &leg{c: l.c, tx: l})
		}
	}
	xt.env.Session.Running(f.conns())
	return f
}

// Abandon rolls back every leg of a transaction the client left, or that
// cannot go on: each leg is rolled back (within timeout) and given back,
// or destroyed when that fails. The transaction then has no legs.
func (xt *Tx) Abandon(timeout time.Duration) {
	xt.env.Deps.Metrics.CrossShardTx.WithLabelValues("rolled_back", legCount(len(xt.legs))).Inc()
	for _, l := range xt.legs {
		c := l.c
		_ = c.SetDeadline(time.Now().Add(timeout))
		_, err := c.Exec("ROLLBACK", nil)
		_ = c.SetDeadline(time.Time{})
		if err != nil || c.TxStatus() != 'I' {
			xt.env.Log.Debug("destroying a leg of an abandoned transaction", zap.String("shard", l.shard), zap.Error(err))
			c.Destroy()
			continue
		}
		xt.env.Session.GiveBack([]Conn{c}, nil)
	}
	xt.legs = nil
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
