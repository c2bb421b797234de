package proxy

import (
	"context"
	cryptotls "crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/xdg-go/scram"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// Sidecar errors sent to clients at session level.
var (
	errDraining       = pgerr.Fatalf(pgerr.AdminShutdown, "the brownie sidecar is shutting down")
	errShutdown       = pgerr.Fatalf(pgerr.AdminShutdown, "terminating connection due to sidecar shutdown")
	errTooManyClients = pgerr.Fatalf(pgerr.TooManyConnections, "sorry, too many clients already")
	errCancelHandled  = errors.New("cancel request handled")
)

// bufSize is the size of each buffered reader and writer of a session: small,
// as in PgBouncer (4 KiB), because idle sessions are the common case; bodies
// larger than largeMessage are streamed past the buffers.
const bufSize = wire.RecycledSize

// maxSessionSize bounds the session struct: the runtime allocates it in a
// size class of this many bytes, 256 fewer per client than the next
// (1,792).
const maxSessionSize = 1536

// largeMessage is the size above which a message body is streamed rather
// than buffered.
const largeMessage = 64 << 10

// session is one client connection. Its serve goroutine owns the client
// reader and the upstream writer; the relay goroutine (upstreamToClient)
// owns the upstream reader and the pool.Conn once started. Shared state is
// guarded by mu.
//
// Every client keeps one, dormant or not, so its size is a large share of
// what an idle client costs: small fields sit together, leaving little
// padding, so that it stays within maxSessionSize (checked by a test).
type session struct {
	srv    *Server
	log    sessionLog
	fanLog *zap.Logger // the log of the session's requests spanning shards, built at its first (fanEnv)
	client net.Conn
	peer   string
	pid    uint32 // sidecar backend key given to the client
	secret []byte

	user, database string
	settings       [][2]string // GUCs from the startup packet, in order

	cr *wire.Reader
	cw clientWriter
	uw pooledWriter // the session's writer to whichever upstream it holds

	// Scratch buffers: wbuf for the session goroutine's outgoing messages,
	// hbuf for the held Parses sent ahead of them, rhdr for the relay
	// goroutine's message headers (one relay at a time).
	wbuf []byte
	hbuf []byte
	rhdr [5]byte

	// grewStack is set when the startup ran a TLS handshake or a SCRAM
	// exchange (see serve); startup only.
	grewStack bool

	// lastParse is the text of the client's last Parse (up to
	// maxKeptParse), which the next Parse of the same text shares;
	// lastParseA its analysis, which such a Parse reuses; lastParseOK
	// whether checkParse found it free of syntax errors; lastOIDs the
	// parameter types of the last Parse, which the next Parse of the same
	// types shares. Session goroutine only.
	lastParseOK bool
	lastParse   string
	lastParseA  *analysis
	lastOIDs    []uint32

	// toUpstream counts the bytes writeUpstream sent that are not yet in
	// the relayed-bytes metric (countToUpstream). Session goroutine only.
	toUpstream int

	// relayJobs feeds the relay goroutine (started at an attachment when
	// none runs, under mu; nil while none runs); waitObs caches the pool-wait histogram child
	// for waitFor (session goroutine only).
	relayJobs chan relayJob
	waitObs   prometheus.Observer
	waitFor   router.Target
	// dormant is set while the session waits without a read buffer
	// (idle.go); session goroutine only. parkID and parkWatched, under
	// the server's dormancy lock, identify the session in its epoll
	// instance and say whether its socket is registered there.
	dormant     bool
	parkWatched bool
	parkID      uint64
	// waitMark is the idle sweep's view of the session's wait for its
	// client (awaitClient): 0 when it is not waiting, the sweep epoch the
	// wait began in, or waitKicked once the sweeper has ended it. kickMu
	// orders the sweeper's deadline before the session clears it.
	waitMark atomic.Uint64
	kickMu   sync.Mutex

	// The answer read inline (inline.go). heldRelay is an attachment's
	// relay job not yet given to the relay goroutine; inlineNext says the
	// request's last write went out with it held, for relayInline; reqEnd
	// says the message being forwarded ends a request (Sync or Query);
	// upw is uw's destination. Session goroutine only. upWaitMark is the
	// idle sweep's view of an inline wait for an answer, as waitMark of a
	// wait for the client; inlineConn the upstream it reads, written before
	// upWaitMark.
	heldRelay  relayJob
	inlineNext bool
	// queued says the session's last pool acquisition waited (or
	// dialled): only then does the inline relay hold a request's end for
	// the wait for its answer (inline.go).
	queued     bool
	reqEnd     bool
	upw        upstreamWriter
	upWaitMark atomic.Uint64
	inlineConn net.Conn
	// quietMark and quietUp are the idle sweep's view of the relay
	// goroutine's wait after a quiet answer (quiet.go): the epoch it
	// began in (or waitChecked, waitKicked) and the upstream it reads,
	// stored before quietMark. upDeadline is the read deadline the
	// session goroutine has set on its attachment (zero: none), which a
	// kicked wait restores; written by the session goroutine under kickMu
	// (setUpstreamDeadline), cleared at each attachment.
	quietMark  atomic.Uint64
	quietUp    atomic.Pointer[upstream]
	upDeadline time.Time

	// Owned by the session goroutine (no lock): the client's prepared
	// statements by client name, and its unnamed statement.
	stmts   map[string]*stmtDef
	unnamed *stmtDef

	mu   sync.Mutex
	cond *sync.Cond // signals the end of an internal query
	up   *pool.Conn[*upstream]
	// Per attachment, shared by both goroutines under mu.
	pending     int // Query/Sync/FunctionCall messages awaiting ReadyForQuery
	expect      []expectation
	synced      bool // the last message sent upstream ends a request
	copyIn      bool // upstream is in COPY FROM STDIN
	txStatus    byte
	internal    bool // the relay goroutine runs an internal query: no client writes upstream
	resetting   bool // client gone: relay consumes reset replies, then stops
	resetFailed bool // an error arrived while resetting: destroy, do not release
	upGone      bool // the relay stopped reading the upstream because it failed
	resetDone   bool // the reset completed cleanly: the upstream may be released
	// relayDone is closed when the relay has let go of up. Unlike the
	// fields around it, the session goroutine alone reads and writes it
	// (relayDoneLocked, runRelay, an inline read's end); nil while the
	// relay job is held (inline.go), until runRelay makes it.
	relayDone chan struct{}
	// lostUp is the upstream the relay detached as lost while the session
	// was idle on it (detachLostLocked); until the next attachment the
	// session goroutine may still have been writing a request to it.
	lostUp *upstream
	// Per session, under mu.
	pins      map[string]bool   // reasons the session keeps its upstream
	pinReason string            // the first reason, as counted in the pinned-sessions gauge
	want      map[string]string // settings the client expects (startup + SET), by lower-case name
	startup   map[string]string // settings from the startup packet: what RESET returns to
	seen      map[string]string // ParameterStatus values the client has been told
	// wantShared and seenShared say that want is startup and seen the
	// greeting's values shared with other sessions: copied before a change
	// (ownWantLocked, setSeenLocked).
	wantShared, seenShared bool
	// startupTag is startup interned (Server.settings), set with it.
	startupTag *paramSet
	// reportedFor and reportedVersion identify the upstream parameters
	// last compared with seen, to skip the comparison when nothing changed.
	reportedFor     *upstream
	reportedVersion uint64
	// reportedSet, when not nil, holds values the client was told, every
	// one of them (reportParams sets it; setSeenLocked and greet clear it).
	reportedSet *paramSet
	dirty       dirtyState
	draining    bool
	ended       bool // terminate or finish was called
	ddlSent     bool // a statement changing the schema was sent in the current transaction
	// Cancels (cancel.go): cancelHold counts cancels being delivered to
	// the backend running the session's request, which is not released
	// or given the next request meanwhile; acquireCancel, set while the
	// session waits in a pool for its request's connection (queueable),
	// cancels that wait.
	cancelHold    int
	queueable     bool
	acquireCancel context.CancelCauseFunc
	// waitCtx is the context of the session's pool waits (acquire),
	// replaced after a CancelRequest cancels it; waitCancel cancels it.
	// poolOf caches the pool of poolFor. Session goroutine only.
	waitCtx    context.Context
	waitCancel context.CancelCauseFunc
	poolOf     *upstreamPool
	poolFor    router.Target

	// Routing, under mu. hints are the session's brownie.* hints, local
	// those of SET LOCAL in the current transaction. deferred holds a
	// BEGIN (and hint-only SET LOCALs) answered by the sidecar and not yet
	// sent: the transaction's first statement picks its upstream.
	hints, local hintState
	deferred     []string
	readOnlyTx   bool // the current transaction began READ ONLY
	parking      bool // parkLocked is stopping the relay goroutine
	parked       map[router.Target]*pool.Conn[*upstream]
	txWrote      string               // shard written by the current transaction
	lastWrite    map[string]time.Time // shard → when the session's last write there committed

	// fan is the extended-protocol request spanning shards being built (a
	// Bind routed to several shards, up to its Sync); session goroutine
	// only. fanning (under mu) is set while a fan-out holds connections,
	// fanUps (under mu) are their upstreams, for cancel requests.
	fan     *fanOut
	fanning bool
	fanUps  []*upstream

	// xt is the client's transaction while it spans shards (xact.go);
	// session goroutine only. crossing (under mu) is set while it exists.
	// Under mu: txBegin are the statements that began the current
	// transaction (its BEGIN, as replayed) and txReplay the local settings
	// and savepoints it ran since, for shards it joins later; txMovable
	// says it ran only reads of nothing or of replicated tables at READ
	// COMMITTED, so it may move to another shard (relocateLocked);
	// txSnapshot says the deferred BEGIN asked for REPEATABLE READ or
	// SERIALIZABLE.
	xt         *crossTx
	lreq       *localReq // an extended-protocol request the sidecar answers (xact.go); session goroutine only
	txBegin    []string
	txReplay   []txStmt
	crossing   bool
	txMovable  bool
	txSnapshot bool

	injected atomic.Int32 // replies of replayed (deferred) statements still to swallow

	// describing counts the sidecar's own Describes of statements in the
	// queue (expDescribeInjected), whose answers the relay goroutine
	// swallows. Under mu: descWait is the statement whose Bind waits for
	// the answer (awaitDescriptionLocked); descChecked the one whose wait
	// ended, so that its Bind goes on unchecked; upSkipping says the
	// server skips messages up to a Sync not sent yet, after an error.
	describing  atomic.Int32
	descWait    *stmtDef
	descChecked *stmtDef
	upSkipping  bool

	// preRead is set (under mu) while a read runs ahead of the deferred
	// BEGIN (readAheadLocked), until its request ends; preErr (under mu)
	// says the server answered it with an error.
	preRead atomic.Bool
	preErr  bool

	discard atomic.Bool // stop writing upstream output to the client

	// Local answers, session goroutine only: held are the client's Parses
	// not answered yet; skipStatus, when not 0, is the ReadyForQuery
	// status of a request the sidecar refused, skipped up to its Sync.
	held       []heldParse
	skipStatus byte
	// failedParses (under mu) are client Parses the server failed or
	// skipped, for the session goroutine to forget (parseFailed is set
	// while there are some).
	failedParses []clientParse
	parseFailed  atomic.Bool

	// fatalSeen is set when the upstream sent a FATAL or PANIC error,
	// which the client got as the server's own: the connection loss that
	// follows is then not reported a second time.
	fatalSeen atomic.Bool
	// lostReported makes the report of a lost upstream happen once.
	lostReported atomic.Bool

	// Under mu: idleFatal is a FATAL error the server sent while the
	// session was idle on it (a terminated backend, a shutdown), held back
	// until the loss that follows shows whether the session can go on
	// without that connection (then the client never sees it) or ends
	// (then it is the one error the client gets). checkNext makes the
	// next acquire check an idle pooled connection however recently it
	// was used, after an upstream of the session died.
	checkNext bool
	idleFatal []byte

	// retry records the current request for a retry on another host
	// (retry.go); retryArmed and retryAnswered let the relay goroutine
	// check without the lock whether a failure now would be retried.
	// retryLeft counts the armed request's statements whose answer has
	// not yet ended (unknownEnds when that is not known): the relay
	// goroutine counts down (noteAnswerEnd).
	retry                     readRetry
	retryArmed, retryAnswered atomic.Bool
	retryLeft                 atomic.Int32
	// acks are the armed request's acknowledgements held back from the
	// client (holdAck); relay goroutine only.
	acks []byte
}

// clientWriter serialises writes to the client socket: relayed frames from
// the relay goroutine and errors from the session goroutine or a drain.
type clientWriter struct {
	mu   sync.Mutex
	w    pooledWriter
	conn net.Conn
	rfq  [6]byte // writeReadyLocked's message, kept here so it is not allocated
	// relayed counts the bytes of server messages written since they
	// were last added to the relayed-bytes metric (countRelayedLocked),
	// which is done once per ReadyForQuery rather than per message.
	// Under mu: a relay that ends may still count while the next one,
	// on another goroutine, relays.
	relayed int
}

// maxUncounted bounds relayed between ReadyForQuery messages, so a long
// result or COPY stream shows in the metric as it goes.
const maxUncounted = 64 << 10

// countRelayedLocked adds the bytes relayed so far to c; w.mu must be held.
func (w *clientWriter) countRelayedLocked(c prometheus.Counter) {
	if w.relayed > 0 {
		c.Add(float64(w.relayed))
		w.relayed = 0
	}
}

func (w *clientWriter) sendError(e *pgerr.Error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.conn.SetWriteDeadline(time.Now().Add(time.Second))
	defer w.conn.SetWriteDeadline(time.Time{})
	if _, err := w.w.Write(e.Encode(nil)); err != nil {
		return err
	}
	return w.w.Flush()
}

// sendBytes writes encoded messages made by the sidecar and flushes.
func (w *clientWriter) sendBytes(msgs []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(msgs); err != nil {
		return err
	}
	return w.w.Flush()
}

// sendPieces writes the concatenation of encoded messages made by the
// sidecar and flushes.
func (w *clientWriter) sendPieces(pieces ...[]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range pieces {
		if _, err := w.w.Write(p); err != nil {
			return err
		}
	}
	return w.w.Flush()
}

// send writes messages made by the sidecar, flushing if asked.
func (w *clientWriter) send(flush bool, msgs ...pgproto3.BackendMessage) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	if _, err := w.w.Write(buf); err != nil {
		return err
	}
	if flush {
		return w.w.Flush()
	}
	return nil
}

// writeReadyLocked writes a ReadyForQuery with the given status; w.mu
// must be held.
func (w *clientWriter) writeReadyLocked(status byte, flush bool) error {
	w.rfq = [6]byte{'Z', 0, 0, 0, 5, status}
	if _, err := w.w.Write(w.rfq[:]); err != nil {
		return err
	}
	if flush {
		return w.w.Flush()
	}
	return nil
}

// serve runs a client connection's startup (negotiation, authentication
// and greeting) and then the session (run), which owns the connection and
// the registration from then on. It holds one count of the server's wait
// group, taken by accept, which run releases when the session ends; a
// session that does not start is cleaned up and released here.
//
// The session goes on in the same goroutine, except after a TLS handshake
// or a SCRAM exchange: these grow the goroutine's stack, and a new
// goroutine (run) keeps the session from carrying that stack until it
// goes dormant. A plain startup, the common case of a connection per
// request, starts no goroutine beyond the one accept started.
func (s *Server) serve(conn net.Conn) {
	// want and seen are set at the startup and the greeting; the session
	// is idle, outside any transaction, until its first statement.
	ss := &session{srv: s, client: conn, stmts: map[string]*stmtDef{}, pins: map[string]bool{},
		startup: map[string]string{}, txStatus: 'I', synced: true, retry: readRetry{ok: s.routingEnabled()}}
	ss.cond = sync.NewCond(&ss.mu)
	ss.log = sessionLog{base: s.log, f: sessionFields{ss: ss, conn: conn}}
	ss.cw = clientWriter{w: pooledWriter{dst: conn}, conn: conn}
	// The session's reader reads the startup packets too: one read takes
	// a startup message whole (and whatever the client sent after it).
	ss.cr = wire.NewReader(conn, bufSize)
	registered, err := ss.start()
	if err != nil {
		if registered {
			s.unregister(ss)
		}
		_ = conn.Close()
		ss.cr.Recycle()
		s.wg.Done()
		return
	}
	if ss.grewStack {
		go ss.run(conn)
		return
	}
	ss.run(conn)
}

// sessionLog is a session's logger: the server's, adding the session's
// fields (sessionFields) to each event it writes. It holds no logger of
// its own: most sessions never log above debug, and a child logger costs
// allocations at every connection. Safe for concurrent use.
type sessionLog struct {
	base *zap.Logger
	f    sessionFields
}

func (l *sessionLog) Debug(msg string, fields ...zap.Field) { l.write(zap.DebugLevel, msg, fields) }
func (l *sessionLog) Info(msg string, fields ...zap.Field)  { l.write(zap.InfoLevel, msg, fields) }
func (l *sessionLog) Warn(msg string, fields ...zap.Field)  { l.write(zap.WarnLevel, msg, fields) }

// Enabled reports whether events at lvl are written, for a caller to skip
// building the fields of one that is not.
func (l *sessionLog) Enabled(lvl zapcore.Level) bool { return l.base.Core().Enabled(lvl) }

func (l *sessionLog) write(lvl zapcore.Level, msg string, fields []zap.Field) {
	if ce := l.base.Check(lvl, msg); ce != nil {
		ce.Write(append([]zap.Field{zap.Inline(l.f)}, fields...)...)
	}
}

// Logger returns a logger adding the session's fields, for code outside
// the session (a request spanning shards) that logs on its behalf.
func (l *sessionLog) Logger() *zap.Logger { return l.base.WithLazy(zap.Inline(l.f)) }

// sessionFields are the fields of a session's log events: the client's
// address and, once the session is registered, the pid the client was
// given. They are encoded at the session's first event (its logger is
// lazy); no session logs between its startup's first steps and its
// registration unless it then ends.
type sessionFields struct {
	ss   *session
	conn net.Conn // as accepted, under any TLS layer
}

// MarshalLogObject adds the fields to enc.
func (f sessionFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("peer", f.conn.RemoteAddr().String())
	if f.ss.pid != 0 {
		enc.AddUint32("client_pid", f.ss.pid)
	}
	return nil
}

// start runs the session's startup up to its greeting. It reports whether
// the session was registered (for the caller to unregister when start
// fails) and the failure, already reported to the client.
func (ss *session) start() (registered bool, err error) {
	s := ss.srv
	err = ss.negotiateStartup()
	if errors.Is(err, errCancelHandled) {
		return false, err
	}
	if err == nil {
		err = ss.authenticate()
	}
	if err == nil {
		err = s.register(ss)
		registered = err == nil
	}
	if err == nil {
		err = ss.startupHints()
	}
	var c *pool.Conn[*upstream]
	if err == nil {
		// The greeting answers from what the upstream reported at its
		// startup, with no I/O: check the connection, so that no client is
		// greeted over a server that went away.
		c, err = ss.greetingConn()
	}
	if err == nil {
		err = ss.greet(c.Value)
		// The greeting connection goes back at once, in session mode too:
		// a session takes an upstream for its first statement, on the
		// shard that statement routes to (as PgBouncer does, idle clients
		// hold no server connection).
		c.Release()
	}
	if err != nil {
		ss.fail(err)
		return registered, err
	}
	ss.log.Debug("session started", zap.String("user", ss.user))
	if !ss.transactionMode() {
		ss.mu.Lock()
		ss.pins[PinSessionMode] = true
		ss.mu.Unlock()
	}
	return registered, nil
}

// run relays a started session until it ends, then unregisters it and
// closes conn (the accepted connection, under any TLS layer). It owns
// both from serve's startup and holds one count of the server's wait
// group, which it releases last. When the session goes dormant, run hands
// all of it on and ends, so a long-idle session keeps neither a goroutine
// nor the stack its statements grew: to the server's dormancy, which
// starts a new run when the client's socket becomes readable, or, where
// the socket cannot be watched, to a fresh goroutine waiting in a read.
func (ss *session) run(conn net.Conn) {
	if ss.relay() {
		if !ss.srv.dormancy.park(ss, conn) {
			go ss.run(conn)
		}
		return
	}
	ss.srv.unregister(ss)
	_ = conn.Close()
	ss.cr.Recycle() // nothing reads the client any more
	ss.srv.wg.Done()
}

// fail reports a failure that refuses a session during startup to the
// client (when there is one to tell), counts and logs it.
func (ss *session) fail(err error) { ss.report(err, true) }

// abort reports an error that ends a running session (the client sees it
// as FATAL), counts and logs it.
func (ss *session) abort(err error) { ss.report(err, false) }

func (ss *session) report(err error, startup bool) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		ss.log.Debug("client left", zap.Error(err))
		return
	}
	pe := pgerr.From(err).AsFatal()
	ss.srv.metrics.Errors.WithLabelValues("sidecar", pe.Code.Class()).Inc()
	if startup {
		ss.srv.metrics.ClientsRejected.WithLabelValues(string(pe.Code)).Inc()
		ss.log.Info("session refused", zap.String("sqlstate", string(pe.Code)), zap.Error(err))
	} else {
		ss.log.Warn("session failed", zap.String("sqlstate", string(pe.Code)), zap.Error(err))
	}
	if !ss.discard.Load() {
		_ = ss.cw.sendError(pe)
	}
}

// negotiateStartup handles SSLRequest, GSSENCRequest and CancelRequest and
// reads the StartupMessage, within the startup timeout.
func (ss *session) negotiateStartup() error {
	_ = ss.client.SetDeadline(time.Now().Add(ss.srv.cfg.Listen.StartupTimeout))
	defer ss.client.SetDeadline(time.Time{})
	sslDone, gssDone := false, false
	for {
		st, err := wire.ReadStartup(ss.cr.Underlying())
		switch {
		case errors.Is(err, wire.ErrStartupLength):
			// Not a startup packet at all (node-postgres's connect() then
			// end() sends Terminate first): closed without an answer, as
			// Postgres does.
			ss.log.Debug("invalid length of startup packet", zap.Error(err))
			return io.EOF
		case errors.Is(err, wire.ErrBadStartup):
			return pgerr.Fatalf(pgerr.ProtocolViolation, "%v", err)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return pgerr.Fatalf(pgerr.ProtocolViolation, "startup packet not received within %s", ss.srv.cfg.Listen.StartupTimeout)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return io.EOF
		case err != nil:
			return err
		}
		switch st.Kind {
		case wire.KindCancel:
			ss.srv.cancel(st.CancelPID, st.CancelSecret)
			return errCancelHandled
		case wire.KindGSSEnc:
			if gssDone || isTLS(ss.client) {
				return pgerr.Fatalf(pgerr.ProtocolViolation, "unexpected GSSENCRequest")
			}
			gssDone = true
			if _, err := ss.client.Write([]byte{'N'}); err != nil {
				return err
			}
		case wire.KindSSL:
			if sslDone {
				return pgerr.Fatalf(pgerr.ProtocolViolation, "unexpected second SSLRequest")
			}
			sslDone = true
			if ss.srv.clientTLS == nil {
				if _, err := ss.client.Write([]byte{'N'}); err != nil {
					return err
				}
				continue
			}
			if ss.cr.Buffered() > 0 {
				// Bytes sent before the handshake would be taken as
				// if they came over TLS (CVE-2021-23214): refused, as
				// Postgres refuses them.
				return pgerr.Fatalf(pgerr.ProtocolViolation, "received unencrypted data after SSL request")
			}
			if _, err := ss.client.Write([]byte{'S'}); err != nil {
				return err
			}
			tc := cryptotls.Server(ss.client, ss.srv.clientTLS)
			if err := tc.Handshake(); err != nil {
				return fmt.Errorf("client TLS handshake: %w", io.EOF)
			}
			ss.grewStack = true
			ss.client = tc
			ss.cw.conn = tc
			ss.cw.w.Reset(tc)
			ss.cr = wire.NewReader(tc, bufSize)
		case wire.KindStartup:
			return ss.acceptStartup(st)
		}
	}
}

func isTLS(c net.Conn) bool {
	_, ok := c.(*cryptotls.Conn)
	return ok
}

// acceptStartup records user, database and settings and answers a newer
// protocol version with NegotiateProtocolVersion (the sidecar speaks 3.0).
func (ss *session) acceptStartup(st *wire.Startup) error {
	if minor := st.Version & 0xFFFF; minor > 0 || len(st.ProtocolOptions) > 0 {
		buf, _ := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.ProtocolOptions}).Encode(nil)
		if _, err := ss.cw.w.Write(buf); err != nil {
			return err
		}
	}
	for _, p := range st.Params {
		switch p.Name {
		case "user":
			ss.user = p.Value
		case "database":
			ss.database = p.Value
		case "replication":
			if p.Value != "false" && p.Value != "off" && p.Value != "0" {
				return pgerr.Fatalf(pgerr.FeatureNotSupported, "replication connections are not supported by the brownie sidecar")
			}
		case "options":
			opts, err := parseOptions(p.Value)
			if err != nil {
				return pgerr.Fatalf(pgerr.FeatureNotSupported, "invalid startup options: %v", err)
			}
			ss.settings = append(ss.settings, opts...)
		default:
			ss.settings = append(ss.settings, [2]string{p.Name, p.Value})
		}
	}
	if ss.database == "" {
		ss.database = ss.user
	}
	for _, kv := range ss.settings {
		if !validGUCName(kv[0]) {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "invalid startup parameter name %q", kv[0])
		}
		name := strings.ToLower(kv[0])
		ss.startup[name] = kv[1]
	}
	ss.want, ss.wantShared = ss.startup, true // until the first change (ownWantLocked)
	ss.startupTag = ss.srv.settings.intern(ss.startup)
	return nil
}

// authenticate applies the client access rules: peers outside loopback and
// the allowed CIDRs are refused; users in the auth file must pass
// SCRAM-SHA-256; other users must be DB_USER and are trusted only from
// local peers.
func (ss *session) authenticate() error {
	kind, peer := classifyPeer(ss.client.RemoteAddr(), ss.srv.allowed)
	ss.peer = peer
	if kind == peerRefused {
		return pgerr.Fatalf(pgerr.InvalidAuthorization, "connections from %s are not allowed", peer).
			WithHint("add the client network to CLIENT_ALLOWED_CIDRS")
	}
	if ss.database != ss.srv.cfg.Database {
		return pgerr.Fatalf(pgerr.InvalidCatalogName, "database %q does not exist", ss.database).
			WithDetail(fmt.Sprintf("this sidecar serves database %q", ss.srv.cfg.Database))
	}
	if creds, ok := ss.srv.users[ss.user]; ok {
		return ss.scramAuth(creds)
	}
	if kind != peerLocal {
		return pgerr.Fatalf(pgerr.InvalidAuthorization, "user %q must authenticate with a password from %s", ss.user, peer).
			WithHint("list the user in CLIENT_AUTH_FILE")
	}
	if ss.user != ss.srv.cfg.User {
		return pgerr.Fatalf(pgerr.InvalidAuthorization, "role %q is not served by this sidecar", ss.user).
			WithDetail(fmt.Sprintf("the sidecar connects upstream as %q; use that user name or list this one in CLIENT_AUTH_FILE", ss.srv.cfg.User))
	}
	return nil
}

func (ss *session) scramAuth(creds scram.StoredCredentials) error {
	conv, err := newSCRAM(creds)
	if err != nil {
		return pgerr.From(err)
	}
	ss.grewStack = true
	authFailed := pgerr.Fatalf(pgerr.InvalidPassword, "password authentication failed for user %q", ss.user)
	if err := ss.cw.send(true, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}); err != nil {
		return err
	}
	_ = ss.client.SetDeadline(time.Now().Add(ss.srv.cfg.Listen.StartupTimeout))
	defer ss.client.SetDeadline(time.Time{})
	first := true
	for !conv.Done() {
		typ, _, err := ss.cr.Next()
		if err != nil {
			return err
		}
		if typ != 'p' {
			return pgerr.Fatalf(pgerr.ProtocolViolation, "expected SASL response, got message type %q", typ)
		}
		body, err := ss.cr.Body()
		if err != nil {
			return err
		}
		var data []byte
		if first {
			var m pgproto3.SASLInitialResponse
			if m.Decode(body) != nil || m.AuthMechanism != "SCRAM-SHA-256" {
				return pgerr.Fatalf(pgerr.ProtocolViolation, "client selected an unsupported SASL mechanism")
			}
			data, first = m.Data, false
		} else {
			var m pgproto3.SASLResponse
			if m.Decode(body) != nil {
				return pgerr.Fatalf(pgerr.ProtocolViolation, "malformed SASL response")
			}
			data = m.Data
		}
		out, err := conv.Step(string(data))
		if err != nil {
			return authFailed.WithCause(err)
		}
		var msg pgproto3.BackendMessage = &pgproto3.AuthenticationSASLContinue{Data: []byte(out)}
		if conv.Done() {
			msg = &pgproto3.AuthenticationSASLFinal{Data: []byte(out)}
		}
		if err := ss.cw.send(true, msg); err != nil {
			return err
		}
	}
	if !conv.Valid() {
		return authFailed
	}
	return nil
}

// greet tells the client what Postgres tells it after authentication:
// AuthenticationOk, every reported parameter, the sidecar's BackendKeyData
// and ReadyForQuery, in one write.
func (ss *session) greet(u *upstream) error {
	// The values, and their messages, are shared with the other sessions
	// greeted over u since its parameters last changed (about 600 bytes a
	// session otherwise); setSeenLocked copies the values before a change.
	if u.greeted == nil || u.greetedVersion != u.paramsVersion {
		g := maps.Clone(u.params)
		if _, ok := g["in_hot_standby"]; ok {
			g["in_hot_standby"] = "off" // the sidecar takes writes, whichever host greeted
		}
		names := make([]string, 0, len(g))
		for name := range g {
			names = append(names, name)
		}
		slices.SortFunc(names, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
		var status []byte
		for _, name := range names {
			status, _ = (&pgproto3.ParameterStatus{Name: name, Value: g[name]}).Encode(status)
		}
		u.greeted, u.greetedStatus, u.greetedVersion = g, status, u.paramsVersion
	}
	ss.mu.Lock()
	ss.seen, ss.seenShared = u.greeted, true
	ss.reportedFor, ss.reportedVersion, ss.reportedSet = u, u.paramsVersion, nil
	ss.mu.Unlock()
	// AuthenticationOk, the parameters, BackendKeyData and ReadyForQuery,
	// written piece by piece into the client writer's pooled buffer: a
	// connection per request builds no greeting of its own.
	key := make([]byte, 13) // BackendKeyData
	key[0] = 'K'
	binary.BigEndian.PutUint32(key[1:], 12)
	binary.BigEndian.PutUint32(key[5:], ss.pid)
	copy(key[9:], ss.secret)
	return ss.cw.sendPieces(authenticationOK, u.greetedStatus, key, readyIdle)
}

// authenticationOK and readyIdle are the greeting's fixed messages.
var (
	authenticationOK = []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}
	readyIdle        = []byte{'Z', 0, 0, 0, 5, 'I'}
)

// setSeenLocked records that the client was told value v of parameter
// name, first copying the values the session shares since its greeting.
// Called with ss.mu held.
func (ss *session) setSeenLocked(name, v string) {
	if ss.seenShared || ss.seen == nil {
		ss.seen, ss.seenShared = maps.Clone(ss.seen), false
		if ss.seen == nil {
			ss.seen = map[string]string{}
		}
	}
	ss.seen[name] = v
	ss.reportedSet = nil
}

// ownWantLocked makes ss.want the session's own map before a change: it
// starts as the startup settings, shared with ss.startup (which never
// changes after the startup). Called with ss.mu held.
func (ss *session) ownWantLocked() {
	if ss.wantShared || ss.want == nil {
		ss.want, ss.wantShared = maps.Clone(ss.want), false
		if ss.want == nil {
			ss.want = map[string]string{}
		}
	}
}
