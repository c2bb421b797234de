package fanout

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/router"
)

// Conn is the upstream connection one leg runs on: a connection the
// session took from a pool (or had parked), with the client's settings.
// The Request or Tx holding it owns it until it hands it back through
// Session.GiveBack or Destroy. Its methods are called from the session
// goroutine, except Write, which a request may call from a goroutine of
// its own while the session goroutine reads the answers.
type Conn interface {
	Statements
	// Target is the shard, role and host the connection is to.
	Target() router.Target
	// Write writes b to the server.
	Write(b []byte) (int, error)
	// Reader reads the server's messages.
	Reader() *wire.Reader
	// Exec runs sql as a simple query outside any request, passing each
	// row to row (which may be nil), and returns its command tag; a
	// server error is a *pgerr.Error.
	Exec(sql string, row func([][]byte)) (tag string, err error)
	// SetDeadline bounds the connection's reads and writes (zero: none).
	SetDeadline(t time.Time) error
	// BackendPID is the server process the connection talks to.
	BackendPID() uint32
	// Note records a ParameterStatus ('S') or ReadyForQuery ('Z') the
	// server sent on the connection, with its body.
	Note(typ byte, body []byte)
	// TxStatus is the status of the last ReadyForQuery.
	TxStatus() byte
	// ObserveQuery records how long the server took to answer a request.
	ObserveQuery(d time.Duration)
	// Destroy closes the connection; the pool replaces it. Idempotent.
	Destroy()
}

// Statements is the connection's share of the session's prepared
// statements: which of the client's statements the server holds, under
// which name.
type Statements interface {
	// Prepare returns what to send ahead of a use of s for the server to
	// hold it (nothing when it does: an unnamed statement is the
	// server's unnamed one, a named one has a sidecar name), the name to
	// use, and the messages that were injected, in order; their answers
	// are swallowed.
	Prepare(s Stmt, unnamed bool) (out []byte, name string, injected []Injected)
	// Parsed records the server's answer to an injected Parse of key ("":
	// the unnamed statement): ok when it answered ParseComplete, not ok
	// when it failed or skipped it (the server does not hold it).
	Parsed(key string, ok bool)
}

// Injected is a message Statements.Prepare injected ahead of a use of a
// statement.
type Injected struct {
	// Close: a Close of a statement evicted from the connection's cache;
	// else a Parse of the statement Key ("" for the unnamed one).
	Close bool
	Key   string
}

// Stmt is a statement the client prepared, as its session keeps it.
type Stmt interface {
	// SQL is the statement's text.
	SQL() string
	// Variant returns the statement with text sql and the same parameter
	// types, kept with the statement so that it is prepared once per
	// connection however often it is bound. Session goroutine only.
	Variant(sql string) Stmt
}

// Client is the client socket of the session a request answers. Every
// method is called from the session goroutine; writes are serialised
// with the session's other writers.
type Client interface {
	// Send queues one message to the client; an error means the client
	// is gone.
	Send(typ byte, body []byte) error
	// Stream sends a message whose n-byte body is the current message
	// of r (a leg's DataRow too large to buffer), copying it as it is
	// read. On an error, r's body may be partly read.
	Stream(typ byte, n int, r *wire.Reader) error
	// Flush sends what was queued.
	Flush() error
	// Ready sends ReadyForQuery with status and flushes.
	Ready(status byte) error
	// Next reads the header of the client's next message (COPY data
	// during COPY FROM STDIN); Body reads its body.
	Next() (typ byte, n int, err error)
	Body() ([]byte, error)
}

// Session is what a request needs of the client's session besides its
// socket: connections and the bookkeeping of what ran. Session goroutine
// only.
type Session interface {
	// PID is the backend process id the client was given (notifications
	// relayed from a leg name it).
	PID() uint32
	// Running records that the session's request runs on conns, so that a
	// cancel request reaches them; it lasts until the session ends the
	// request.
	Running(conns []Conn)
	// Take takes a connection for t with the client's settings (the
	// one the session parked for t, else one from t's pool); the caller
	// owns it.
	Take(t router.Target) (Conn, error)
	// GiveBack waits until no cancel of the session is being delivered,
	// then parks or releases the idle connections and destroys the
	// others.
	GiveBack(idle, broken []Conn)
	// Lost logs the loss of c and returns the FATAL error (08006) that
	// ends the session.
	Lost(c Conn, err error) error
	// Wrote records a write committed on shard at t, for
	// read-your-writes.
	Wrote(shard string, t time.Time)
}

// Env is what the requests of one session work with.
type Env struct {
	Deps    *Deps
	Session Session
	Client  Client
	Log     *zap.Logger // the session's
}

// Deps are a server's dependencies shared by the requests of all its
// sessions.
type Deps struct {
	Router *router.Router
	// Primary returns the target for writes on shard: its current
	// primary. Safe for concurrent use.
	Primary func(shard string) (router.Target, bool)
	Catalog *Catalog
	Metrics Metrics
}

// Metrics are the collectors requests spanning shards report to (see
// internal/metrics for their meaning). None is labelled by team.
type Metrics struct {
	FanOuts         *prometheus.CounterVec // kind, outcome
	FanOutShards    prometheus.Histogram
	TwoPhaseCommits *prometheus.CounterVec // outcome
	CrossShardTx    *prometheus.CounterVec // outcome, shards
	MergedReads     *prometheus.CounterVec // kind
	Refused         *prometheus.CounterVec // reason
	Errors          *prometheus.CounterVec // source, class
	ToClient        prometheus.Counter
	ToUpstream      prometheus.Counter
}

// Plan is where a statement spanning shards runs: one target per shard,
// in shard-map order. Made by the session's routing; immutable once a
// request runs it.
type Plan struct {
	Targets  []router.Target
	ReadOnly bool
	// Broadcast: the statement changes replicated tables or the schema,
	// identically on every shard; the client gets the first shard's
	// answer, and every shard must give the same command tag.
	Broadcast bool
	// NoTxBlock: Postgres refuses the statement inside a transaction
	// block (VACUUM, CREATE INDEX CONCURRENTLY…); it runs shard by shard.
	NoTxBlock bool
	// DDL: the statement changes the schema (not replicated rows).
	DDL bool
	// Copy, for COPY FROM STDIN into a sharded table, splits its rows.
	Copy    *router.CopySplit
	Explain string
}

// Joins reports whether a statement planned as q may join a request
// planned as p: the same shards, and no write in a read's request (a
// read's legs may be replicas and are not wrapped in a transaction).
func (p *Plan) Joins(q *Plan) bool {
	if len(p.Targets) != len(q.Targets) {
		return false
	}
	for i := range p.Targets {
		if p.Targets[i].Shard != q.Targets[i].Shard {
			return false
		}
	}
	return q.ReadOnly || !p.ReadOnly
}

// Shards names the plan's shards, in order.
func (p *Plan) Shards() []string {
	names := make([]string, len(p.Targets))
	for i, t := range p.Targets {
		names[i] = t.Shard
	}
	return names
}
