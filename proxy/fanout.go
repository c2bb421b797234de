package proxy

import (
	"slices"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// Requests spanning shards run in package fanout; this file is the
// session's part: deciding that a message starts one, parking what the
// session holds, taking the legs' connections, and feeding a pipeline's
// later messages to the request up to its Sync.

// fanPlan, fanOut and crossTx name package fanout's types where the
// session keeps them.
type (
	fanPlan = fanout.Plan
	fanOut  = fanout.Request
	crossTx = fanout.Tx
	txStmt  = fanout.TxStmt
)

// fanOutMessage starts a fan-out request with a Query or Bind the router
// sent to several shards. A Query runs at once; a Bind opens a request
// that later messages join until Sync.
func (ss *session) fanOutMessage(typ byte, n int, body []byte, plan *fanPlan) error {
	f, err := ss.beginFanOut(plan)
	if err != nil {
		return ss.endFanOut(err)
	}
	if typ == 'Q' {
		f.Query(string(body[:len(body)-1]))
		return ss.endFanOut(ss.runFan(f, f.Run()))
	}
	ss.fan = f
	if err := f.Bind(n, body, plan, ss.bindStmt(body)); err != nil {
		ss.fan = nil
		return ss.endFanOut(err)
	}
	return nil
}

// beginFanOut parks the session's idle upstream (if any) and takes a
// connection for every shard of plan, for a request outside any
// transaction (inside one, the crossTx serves it).
func (ss *session) beginFanOut(plan *fanPlan) (*fanOut, error) {
	ss.mu.Lock()
	for {
		for ss.internal {
			ss.waitLocked()
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
			ss.waitLocked()
			continue
		}
		ss.mu.Unlock()
		return nil, pgerr.Errorf(pgerr.InternalError, "a request spanning shards outside a transaction found the session in one")
	}
	ss.fanning = true
	ss.mu.Unlock()
	var conns []fanout.Conn
	for _, t := range plan.Targets {
		c, err := ss.takeConn(t)
		if err != nil {
			fanSession{ss}.GiveBack(conns, nil) // unused: still idle
			return nil, ss.sessionError(err)
		}
		conns = append(conns, ss.legConn(c))
	}
	return fanout.New(ss.fanEnv(), plan, conns), nil
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

// runFan ends a request f ran (err is what Run or Control returned): the
// session's transaction status follows it; on an error the request's
// connections are destroyed (a transaction spanning shards it was a
// statement of ends with them) and the session ends.
func (ss *session) runFan(f *fanOut, err error) error {
	if err == nil {
		if f.Tx() != nil {
			ss.mu.Lock()
			ss.txStatus = f.Status()
			ss.mu.Unlock()
		}
		return nil
	}
	ss.destroyFan(f)
	return ss.sessionError(err)
}

// destroyFan destroys a request that cannot finish, with the transaction
// spanning shards it was a statement of.
func (ss *session) destroyFan(f *fanOut) {
	f.Destroy()
	ss.mu.Lock()
	if xt := f.Tx(); xt != nil && ss.xt == xt {
		ss.xt, ss.crossing = nil, false
		ss.txBegin, ss.txReplay = nil, nil
	}
	ss.txStatus = 'I'
	ss.mu.Unlock()
}

// fanMessage handles a client message inside an extended-protocol
// request spanning shards (after its first Bind, up to Sync): the
// session answers Parse and the Close of a statement itself (in order),
// routes each Bind, and the request takes the rest.
func (ss *session) fanMessage(typ byte, n int) error {
	f := ss.fan
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
		f.Answered('1')
	case 'B':
		if f.Failing() {
			return nil // the server would skip it: nothing to answer
		}
		def := ss.bindStmt(body)
		if def == nil { // unknown statement (or malformed): the server says so
			return f.Bind(n, body, f.Plan(), nil)
		}
		r := ss.routeMessage('B', n, body, true, nil, false)
		if r.refuse == nil && f.Tx() != nil {
			// In a transaction spanning shards, a statement joins the
			// request when it needs the same legs.
			shards, plan := ss.crossShards(r)
			if !slices.Equal(shards, f.Shards()) {
				f.Fail(fanout.ErrMixedPipeline())
				return nil
			}
			return f.Bind(n, body, plan, def)
		}
		switch {
		case r.refuse != nil:
			f.Fail(r.refuse)
		case r.fan == nil || !f.Plan().Joins(r.fan):
			f.Fail(fanout.ErrMixedPipeline())
		default:
			return f.Bind(n, body, r.fan, def)
		}
	case 'D':
		if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Describe message")
		}
		if body[0] == 'P' {
			f.DescribePortal(n, body)
			return nil
		}
		name, _, err := cstr(body[1:])
		if err != nil {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Describe message")
		}
		f.DescribeStmt(n, body, ss.fanStmt(name), name == "")
	case 'E':
		f.Execute(n, body)
	case 'C':
		if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Close message")
		}
		if body[0] == 'S' {
			if err := ss.undefine(body); err != nil {
				return err
			}
			f.Answered('3')
			return nil
		}
		f.ClosePortal(n, body)
	case 'H':
		return f.Flush() // a lost leg ends the session: see relay

	case 'S':
		ss.fan = nil
		return ss.endFanOut(ss.runFan(f, f.Sync()))
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

// stmtNamed returns the client's statement name ("" for the unnamed one).
func (ss *session) stmtNamed(name string) *stmtDef {
	if name == "" {
		return ss.unnamed
	}
	return ss.stmts[name]
}

// fanStmt is stmtNamed for a request spanning shards: nil (not a typed
// nil) when the client has no such statement.
func (ss *session) fanStmt(name string) fanout.Stmt {
	if def := ss.stmtNamed(name); def != nil {
		return def
	}
	return nil
}

// bindStmt returns the client's statement a Bind body names, or nil when
// it names none (or is malformed).
func (ss *session) bindStmt(body []byte) fanout.Stmt {
	_, name, _, err := bindHeader(body)
	if err != nil {
		return nil
	}
	return ss.fanStmt(name)
}
