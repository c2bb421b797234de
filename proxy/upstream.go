package proxy

import (
	"bytes"
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/netx"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/router"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// upstream is one authenticated connection to a Postgres server. It is
// owned by whoever holds its pool.Conn; only that goroutine reads or writes
// it, except Close, which may be called from any goroutine.
type upstream struct {
	conn net.Conn // TLS
	raw  net.Conn // the TCP connection under conn
	// aw is the connection under conn's TLS (nil when it is not a
	// socket): the inline relay writes a request's end from inside the
	// wait for its answer through it (inline.go).
	aw netx.Awaiter
	// qr is the same connection, for skipping the read that would find
	// nothing after a quiet answer (quiet.go); nil when it is not a
	// socket. quietSeq is qr's WriteSeq after the last write that ended
	// a request (Sync or Query), 0 after any other: written by the
	// session writing the connection, read by the relay reading it.
	qr       netx.QuietReader
	quietSeq atomic.Uint64
	r        *wire.Reader
	target   router.Target
	// Backend key of the server process, for cancel requests.
	pid    uint32
	secret []byte
	// params are the server's current ParameterStatus values;
	// paramsVersion grows whenever one changes.
	params        map[string]string
	paramsVersion uint64
	// pset is params interned (paramSets.of) at version psetVersion.
	pset        *paramSet
	psetVersion uint64
	txStatus    byte
	tag         string // the last command tag exec read
	gen         uint64
	serial      string

	// greeted is what sessions greeted over this connection are told
	// (params as of greetedVersion, in_hot_standby off), shared by them
	// until one changes its copy; see session.greet. greetedStatus is
	// their ParameterStatus messages, encoded in the greeting's order.
	greeted        map[string]string
	greetedStatus  []byte
	greetedVersion uint64

	// State the sidecar keeps for the session holding the connection,
	// guarded by that session's mutex: statements prepared under sidecar
	// names, the statement held as the unnamed one, and settings applied
	// on behalf of clients (beyond the connection's own defaults).
	stmts   *stmtCache
	unnamed *stmtDef
	applied map[string]string
	// appliedTag, when not nil, is an interned set equal to applied
	// (a session's startupTag); every change to applied clears it (see
	// syncSettings).
	appliedTag *paramSet

	// duration observes the time from a client request to its
	// ReadyForQuery on this connection's target.
	duration prometheus.Observer
	// clients is the server's backendClients registry, which holds this
	// connection from its dial to its Close (nil for connections outside
	// the pools). served is the sidecar pid of the client it last served
	// (0: none yet): written by the session attaching it, read by any
	// session's relay goroutine naming a notification's sender.
	clients *sync.Map
	served  atomic.Uint32
	// answered, shared by every pooled connection to the host (nil for
	// connections outside the pools), is when one of them last got the
	// end of an answer, in nanoseconds after clockBase: the health checks
	// tell a busy host from a silent one by it (Server.lastAnswer).
	answered *atomic.Int64
}

// clockBase is the origin of upstream.answered: times are kept as their
// monotonic distance from it, so a wall-clock step does not move them.
var clockBase = time.Now()

// answerGrain is how fresh upstream.answered is kept: at most one store
// per grain, so connections answering thousands of times a second do not
// all write the shared word each time.
const answerGrain = time.Millisecond

// noteAnswer records that u got the end of an answer at now. Safe for
// concurrent use.
func (u *upstream) noteAnswer(now time.Time) {
	if u.answered == nil {
		return
	}
	if n := int64(now.Sub(clockBase)); n-u.answered.Load() >= int64(answerGrain) {
		u.answered.Store(n)
	}
}

// Close sends Terminate (best effort, bounded) and closes the socket.
// Safe to call more than once.
func (u *upstream) Close() error {
	if u.clients != nil {
		u.clients.Delete(backendKey{u.target.Host.Addr, u.pid})
	}
	_ = u.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = u.conn.Write([]byte{'X', 0, 0, 0, 4})
	return u.conn.Close()
}

// Alive reports whether an idle connection is still usable: nothing is
// buffered and the socket has neither data nor EOF pending. An idle server
// connection has nothing to say; data there is almost always a FATAL
// before the server closed it (shutdown, pg_terminate_backend). It never
// blocks. Call it only while no goroutine reads the connection.
func (u *upstream) Alive() bool {
	return u.r.Buffered() == 0 && u.peek() == peekNothing
}

// peekResult is what a non-blocking peek at an upstream's socket found.
type peekResult int

const (
	peekNothing peekResult = iota // no data, no EOF
	peekData                      // bytes waiting
	peekGone                      // EOF or a socket error, or no socket to peek at
)

// peek looks at u's socket without reading from it or blocking, with a
// raw call as in netx.WrapFast (a peek needs none of the scheduler's
// syscall bookkeeping: Alive runs once per transaction in transaction
// mode), through Control, which does not check deadlines. A connection
// that is not a socket reads as peekNothing. Call it only while no
// goroutine reads u.
func (u *upstream) peek() peekResult {
	sc, ok := u.raw.(syscall.Conn)
	if !ok {
		return peekNothing
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekGone
	}
	res := peekGone
	err = rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == syscall.EAGAIN:
			res = peekNothing
		case errno == 0 && n > 0:
			res = peekData
		}
	})
	if err != nil {
		return peekGone
	}
	return res
}

// Generation is the certificate generation this connection authenticated
// with.
func (u *upstream) Generation() uint64 { return u.gen }

var _ health.Conn = (*upstream)(nil)

// Exec is exec, for the health checker's connections and the work it lends
// them to (two-phase recovery).
func (u *upstream) Exec(sql string, onRow func([][]byte)) error { return u.exec(sql, onRow) }

// InTransaction reports whether the last ReadyForQuery left the connection
// anywhere but idle.
func (u *upstream) InTransaction() bool { return u.txStatus != 'I' }

// SetDeadline sets the read and write deadline of the connection.
func (u *upstream) SetDeadline(t time.Time) error { return u.conn.SetDeadline(t) }

// dialer opens upstream connections presenting the current client
// certificate. Safe for concurrent use.
type dialer struct {
	certs    brownietls.Source
	sslMode  string
	database string
	user     string
	timeout  time.Duration
	now      func() time.Time
	// stmtCacheSize bounds the statements prepared per connection.
	stmtCacheSize int
}

// dial connects to t and completes TLS and the startup handshake. Errors are
// *pgerr.Error values suitable for the client.
func (d *dialer) dial(ctx context.Context, t router.Target) (*upstream, error) {
	return d.dialAs(ctx, t, "")
}

// dialAs is dial with an application_name ("" for none).
func (d *dialer) dialAs(ctx context.Context, t router.Target, appName string) (*upstream, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	b, err := d.bundle(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, "tcp", t.Host.Addr)
	if err != nil {
		return nil, unreachable(t, err)
	}
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	fast := netx.WrapFast(raw)
	conn, err := d.startTLS(fast, t, b)
	if err != nil {
		raw.Close()
		return nil, err
	}
	aw, _ := fast.(netx.Awaiter)
	qr, _ := fast.(netx.QuietReader)
	u := &upstream{
		conn: conn, raw: raw, aw: aw, qr: qr, r: wire.NewReader(conn, 4<<10), // tls.Conn buffers whole records itself
		target: t, params: map[string]string{}, gen: b.Generation, serial: b.Serial,
		stmts: newStmtCache(d.stmtCacheSize), applied: map[string]string{},
	}
	if err := u.startup(d.user, d.database, appName); err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, unreachable(t, fmt.Errorf("startup handshake: %w", ctx.Err()))
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return u, nil
}

// bundle returns the current certificate if it is usable now. When it is
// missing or no longer valid and the source can fetch one on demand
// (brownietls.Refresher, such as the Vault source), it asks for one
// synchronously, bounded by ctx, and checks again.
func (d *dialer) bundle(ctx context.Context) (*brownietls.Bundle, error) {
	b, err := d.usableBundle()
	if err == nil {
		return b, nil
	}
	r, ok := d.certs.(brownietls.Refresher)
	if !ok {
		return nil, err
	}
	rerr := r.RefreshNow(ctx)
	b, perr := d.usableBundle()
	if perr == nil {
		return b, nil
	}
	if rerr != nil {
		perr.Detail = "refreshing it failed: " + rerr.Error()
	}
	return nil, perr
}

// usableBundle returns the current certificate if it is valid now.
func (d *dialer) usableBundle() (*brownietls.Bundle, *pgerr.Error) {
	b, err := d.certs.Current()
	if err != nil {
		return nil, pgerr.Fatalf(pgerr.InvalidAuthorization, "no upstream client certificate is available").
			WithHint("the sidecar keeps retrying; check the certificate source (LOCAL_CERT_DIR or Vault)").WithCause(err)
	}
	if err := b.ValidAt(d.now()); err != nil {
		return nil, pgerr.Fatalf(pgerr.InvalidAuthorization, "upstream client certificate is not usable: %v", err).
			WithHint("the sidecar keeps retrying; check the certificate source (LOCAL_CERT_DIR or Vault)").WithCause(err)
	}
	return b, nil
}

func unreachable(t router.Target, err error) *pgerr.Error {
	e := pgerr.Fatalf(pgerr.ConnectionFailure, "could not connect to upstream %s at %s", t, t.Host.Addr)
	e.Detail = err.Error()
	e.Retryable = true
	return e.WithCause(err)
}

// startTLS sends SSLRequest and performs the TLS handshake according to the
// SSL mode.
func (d *dialer) startTLS(raw net.Conn, t router.Target, b *brownietls.Bundle) (net.Conn, error) {
	if _, err := raw.Write(wire.SSLRequest()); err != nil {
		return nil, unreachable(t, err)
	}
	var resp [1]byte
	if _, err := io.ReadFull(raw, resp[:]); err != nil {
		return nil, unreachable(t, err)
	}
	if resp[0] != 'S' {
		return nil, pgerr.Fatalf(pgerr.ConnectionFailure, "upstream %s at %s does not accept TLS connections", t, t.Host.Addr).
			WithHint("set ssl = on on the server; the sidecar authenticates with client certificates only")
	}
	serverName := t.Host.ServerName
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(t.Host.Addr)
	}
	cfg := &cryptotls.Config{
		MinVersion: cryptotls.VersionTLS12,
		ServerName: serverName,
		RootCAs:    b.Roots,
		// Present exactly the bundle checked above, so the connection's
		// generation is the certificate it authenticated with.
		GetClientCertificate: func(*cryptotls.CertificateRequestInfo) (*cryptotls.Certificate, error) {
			return &b.Certificate, nil
		},
	}
	switch d.sslMode {
	case config.SSLVerifyCA:
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs cryptotls.ConnectionState) error { return verifyChain(cs, b.Roots) }
	case config.SSLRequire:
		cfg.InsecureSkipVerify = true
		if b.Roots != nil { // as libpq: require with a root certificate verifies the chain
			cfg.VerifyConnection = func(cs cryptotls.ConnectionState) error { return verifyChain(cs, b.Roots) }
		}
	}
	conn := cryptotls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		e := pgerr.Fatalf(pgerr.ConnectionFailure, "TLS handshake with upstream %s at %s failed", t, t.Host.Addr)
		e.Detail = err.Error()
		var cv *cryptotls.CertificateVerificationError
		if errors.As(err, &cv) {
			e.Hint = "the server certificate does not verify against ca.crt for host " + serverName
		}
		return nil, e.WithCause(err)
	}
	return conn, nil
}

func verifyChain(cs cryptotls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	return err
}

// startup sends the StartupMessage and reads until ReadyForQuery. Only
// AuthenticationOk is acceptable: certificate authentication needs no
// further exchange, and the sidecar holds no passwords.
func (u *upstream) startup(user, database, appName string) error {
	msg := &pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters:      map[string]string{"user": user, "database": database},
	}
	if appName != "" {
		msg.Parameters["application_name"] = appName
	}
	buf, err := msg.Encode(nil)
	if err != nil {
		return pgerr.From(err)
	}
	if _, err := u.conn.Write(buf); err != nil {
		return unreachable(u.target, err)
	}
	for {
		typ, body, err := u.next()
		if err != nil {
			return unreachable(u.target, fmt.Errorf("reading startup response: %w", err))
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				return protocolError(u.target, "short authentication message")
			}
			if code := binary.BigEndian.Uint32(body); code != pgproto3.AuthTypeOk {
				return pgerr.Fatalf(pgerr.InvalidAuthorization,
					"upstream %s asked for password authentication (method %d) for role %q", u.target, code, user).
					WithHint("the sidecar authenticates with client certificates only: use \"hostssl ... cert\" in pg_hba.conf")
			}
		case 'S':
			u.setParam(body)
		case 'K':
			var k pgproto3.BackendKeyData
			if err := k.Decode(body); err != nil {
				return protocolError(u.target, "bad BackendKeyData")
			}
			u.pid, u.secret = k.ProcessID, append([]byte(nil), k.SecretKey...)
		case 'E':
			return upstreamError(body)
		case 'N', 'v':
			// Notices and protocol negotiation need no action here.
		case 'Z':
			if len(body) != 1 {
				return protocolError(u.target, "bad ReadyForQuery")
			}
			u.txStatus = body[0]
			return nil
		default:
			return protocolError(u.target, fmt.Sprintf("unexpected message %q during startup", typ))
		}
	}
}

// next reads one whole message. The body is valid until the next call.
func (u *upstream) next() (byte, []byte, error) {
	typ, _, err := u.r.Next()
	if err != nil {
		return 0, nil, err
	}
	body, err := u.r.Body()
	return typ, body, err
}

func (u *upstream) setParam(body []byte) {
	var ps pgproto3.ParameterStatus
	if ps.Decode(body) == nil && u.params[ps.Name] != ps.Value {
		u.params[ps.Name] = ps.Value
		u.paramsVersion++
	}
}

// exec runs one simple-protocol query to completion, recording
// ParameterStatus changes and passing each DataRow's text values to onRow
// (which may be nil). It returns the first upstream error (as a
// *pgerr.Error keeping the server's code) if any. Used for the sidecar's
// own statements (settings, reset), never for client statements; the
// caller must be the only goroutine reading and writing u.
func (u *upstream) exec(sql string, onRow func([][]byte)) error {
	u.unnamed = nil // a simple Query drops the server's unnamed statement
	if _, err := u.conn.Write(wire.AppendQuery(nil, sql)); err != nil {
		return u.lost(err)
	}
	return u.awaitReady(func(typ byte, body []byte) {
		switch typ {
		case 'D':
			if onRow != nil {
				var dr pgproto3.DataRow
				if dr.Decode(body) == nil {
					onRow(dr.Values)
				}
			}
		case 'C':
			u.tag = string(bytes.TrimSuffix(body, []byte{0}))
		}
	})
}

// prepare prepares statements on u under the given names (a Parse for
// each, then a Sync) and returns the server's first error, if any. The
// caller owns u and nothing else reads it.
func (u *upstream) prepare(names []string, defs []*stmtDef) error {
	var out []byte
	for i, name := range names {
		out = appendParse(out, name, defs[i].query, defs[i].oids)
	}
	out = append(out, 'S', 0, 0, 0, 4)
	if _, err := u.conn.Write(out); err != nil {
		return u.lost(err)
	}
	return u.awaitReady(nil)
}

// awaitReady reads u's answers up to ReadyForQuery, recording
// ParameterStatus changes and the transaction status and passing every
// other message to handle (which may be nil). It returns the first
// ErrorResponse (as a *pgerr.Error keeping the server's code), else the
// I/O error that broke the connection: after a FATAL, the server's last
// words say why.
func (u *upstream) awaitReady(handle func(typ byte, body []byte)) error {
	var first error
	for {
		typ, body, err := u.next()
		if err != nil {
			if first != nil {
				return first
			}
			return u.lost(err)
		}
		switch typ {
		case 'S':
			u.setParam(body)
		case 'E':
			if first == nil {
				first = upstreamError(body)
			}
		case 'Z':
			if len(body) == 1 {
				u.txStatus = body[0]
			}
			return first
		default:
			if handle != nil {
				handle(typ, body)
			}
		}
	}
}

// lost is the FATAL 08006 for a read or write failure on u. After a
// timeout it says whether bytes from the server were waiting unread: then
// the server had answered (or was answering) and the sidecar had not read
// in time, rather than the server not answering at all.
func (u *upstream) lost(err error) *pgerr.Error {
	e := pgerr.Fatalf(pgerr.ConnectionFailure, "connection to upstream %s lost", u.target)
	e.Detail = err.Error()
	if errors.Is(err, os.ErrDeadlineExceeded) && u.unread() {
		e.Detail += "; bytes from the server were already waiting, unread, when the timeout was handled"
	}
	return e.WithCause(err)
}

// unread reports whether bytes from the server are buffered or waiting in
// the socket. It never blocks and works past a deadline. Call it only
// while no goroutine reads u.
func (u *upstream) unread() bool {
	return (u.r != nil && u.r.Buffered() > 0) || u.peek() == peekData
}

// upstreamError turns an upstream ErrorResponse into an *pgerr.Error that
// keeps its code and text.
func upstreamError(body []byte) *pgerr.Error {
	var er pgproto3.ErrorResponse
	if err := er.Decode(body); err != nil {
		return pgerr.Fatalf(pgerr.ProtocolViolation, "malformed error response from upstream")
	}
	return &pgerr.Error{Severity: pgerr.SevFatal, Code: pgerr.Code(er.Code), Message: er.Message, Detail: er.Detail, Hint: er.Hint}
}

func protocolError(t router.Target, what string) *pgerr.Error {
	return pgerr.Fatalf(pgerr.ProtocolViolation, "protocol violation from upstream %s: %s", t, what)
}

// cancel sends a CancelRequest for this connection's backend over a fresh
// TLS connection. It is safe to call from any goroutine.
func (d *dialer) cancel(ctx context.Context, t router.Target, pid uint32, secret []byte) error {
	ctx, stop := context.WithTimeout(ctx, d.timeout)
	defer stop()
	conn, err := d.cancelConn(ctx, t)
	if err != nil {
		return err
	}
	defer conn.Close()
	return sendCancel(conn, pid, secret)
}

// cancelConn opens the TLS connection a CancelRequest to t goes over,
// with ctx's deadline. Safe for concurrent use.
func (d *dialer) cancelConn(ctx context.Context, t router.Target) (net.Conn, error) {
	b, err := d.bundle(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", t.Host.Addr)
	if err != nil {
		return nil, unreachable(t, err)
	}
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	conn, err := d.startTLS(raw, t, b)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return conn, nil
}

// sendCancel sends a CancelRequest over conn (from cancelConn) and waits
// until the server has processed it: the server closes the connection
// once it has signalled the backend.
func sendCancel(conn net.Conn, pid uint32, secret []byte) error {
	buf, _ := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, conn)
	return nil
}

// quoteLiteral quotes s as an SQL string literal, correct whatever the
// setting of standard_conforming_strings.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return "E'" + strings.ReplaceAll(s, `\`, `\\`) + "'"
	}
	return "'" + s + "'"
}
