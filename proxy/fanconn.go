package proxy

import (
	"time"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// This file is the session's side of package fanout's interfaces: a
// pooled upstream as a leg's connection, the client socket, and the
// session's connections and bookkeeping.

// legConn is a pooled upstream holding a leg of a request spanning
// shards. Statement bookkeeping goes through the session's mutex, as for
// the session's own upstream.
type legConn struct {
	ss *session
	c  *pool.Conn[*upstream]
}

var _ fanout.Conn = (*legConn)(nil)

func (l *legConn) Target() router.Target         { return l.c.Value.target }
func (l *legConn) Write(b []byte) (int, error)   { return l.c.Value.conn.Write(b) }
func (l *legConn) Reader() *wire.Reader          { return l.c.Value.r }
func (l *legConn) SetDeadline(t time.Time) error { return l.c.Value.conn.SetDeadline(t) }
func (l *legConn) BackendPID() uint32            { return l.c.Value.pid }
func (l *legConn) TxStatus() byte                { return l.c.Value.txStatus }
func (l *legConn) Destroy()                      { l.c.Destroy() }

func (l *legConn) Exec(sql string, row func([][]byte)) (string, error) {
	err := l.c.Value.exec(sql, row)
	return l.c.Value.tag, err
}

func (l *legConn) Note(typ byte, body []byte) {
	switch {
	case typ == 'S':
		l.c.Value.setParam(body)
	case typ == 'Z' && len(body) == 1:
		l.c.Value.txStatus = body[0]
	}
}

func (l *legConn) ObserveQuery(d time.Duration) {
	if o := l.c.Value.duration; o != nil {
		o.Observe(d.Seconds())
	}
}

func (l *legConn) Prepare(s fanout.Stmt, unnamed bool) ([]byte, string, []fanout.Injected) {
	ss := l.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var exps []expectation
	out, name := ss.ensurePreparedLocked(&exps, l.c.Value, s.(*stmtDef), unnamed)
	injected := make([]fanout.Injected, len(exps))
	for i, e := range exps {
		injected[i] = fanout.Injected{Close: e.kind == expCloseInjected, Key: e.key}
	}
	return out, name, injected
}

func (l *legConn) Parsed(key string, ok bool) {
	u := l.c.Value
	switch {
	case ok && key != "":
		u.stmts.confirm(key)
	case ok:
	case key != "":
		u.stmts.forget(key)
	default:
		u.unnamed = nil
	}
}

// upstreamOf returns the upstream under a leg's connection.
func upstreamOf(c fanout.Conn) *pool.Conn[*upstream] { return c.(*legConn).c }

// fanClient is the session's client socket as a request spanning shards
// writes to it and reads COPY data from it.
type fanClient struct{ ss *session }

var _ fanout.Client = fanClient{}

func (c fanClient) Send(typ byte, body []byte) error {
	w := &c.ss.cw
	var hdr [5]byte
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(wire.AppendHeader(hdr[:0], typ, len(body))); err != nil {
		return err
	}
	_, err := w.w.Write(body)
	return err
}

func (c fanClient) Stream(typ byte, n int, r *wire.Reader) error {
	w := &c.ss.cw
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(wire.AppendHeader(nil, typ, n)); err != nil {
		return err
	}
	return r.CopyBody(&w.w)
}

func (c fanClient) Flush() error {
	w := &c.ss.cw
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Flush()
}

func (c fanClient) Ready(status byte) error {
	w := &c.ss.cw
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writeReadyLocked(status, true)
}

func (c fanClient) Next() (byte, int, error) { return c.ss.cr.Next() }
func (c fanClient) Body() ([]byte, error)    { return c.ss.cr.Body() }

// fanSession is the session as its requests spanning shards see it.
type fanSession struct{ ss *session }

var _ fanout.Session = fanSession{}

func (s fanSession) PID() uint32 { return s.ss.pid }

func (s fanSession) Running(conns []fanout.Conn) {
	ss := s.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.fanning = true
	for _, c := range conns {
		ss.fanUps = append(ss.fanUps, upstreamOf(c).Value)
	}
}

func (s fanSession) Take(t router.Target) (fanout.Conn, error) {
	c, err := s.ss.takeConn(t)
	if err != nil {
		return nil, err
	}
	return s.ss.legConn(c), nil
}

func (s fanSession) GiveBack(idle, broken []fanout.Conn) {
	ss := s.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.waitCancelsLocked() // a cancel being delivered holds the legs
	for _, c := range idle {
		ss.keepLocked(upstreamOf(c))
	}
	for _, c := range broken {
		c.Destroy()
	}
}

func (s fanSession) Lost(c fanout.Conn, err error) error {
	return s.ss.lostError(upstreamOf(c).Value, err)
}

func (s fanSession) Wrote(shard string, t time.Time) {
	s.ss.mu.Lock()
	defer s.ss.mu.Unlock()
	s.ss.wroteLocked(shard, t)
}

// legConn wraps c, a connection the session took, for a request spanning
// shards.
func (ss *session) legConn(c *pool.Conn[*upstream]) fanout.Conn { return &legConn{ss: ss, c: c} }

// fanEnv is what a request spanning shards (or a transaction) of the
// session works with.
func (ss *session) fanEnv() *fanout.Env {
	if ss.fanLog == nil {
		ss.fanLog = ss.log.Logger()
	}
	return &fanout.Env{Deps: ss.srv.fan, Session: fanSession{ss}, Client: fanClient{ss}, Log: ss.fanLog}
}
