package app

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// Raw-socket tests of the client side of the startup protocol. Every
// connection has a deadline so that a hang fails within seconds.

const startupDeadline = 5 * time.Second

// rawClient is a client socket to the sidecar with a pgproto3 Frontend
// for the typed part of the conversation.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRawClient(t *testing.T, network, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout(network, addr, startupDeadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(startupDeadline))
	return &rawClient{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
}

// write sends raw bytes.
func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) encodeAndWrite(m pgproto3.FrontendMessage) {
	c.t.Helper()
	buf, err := m.Encode(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(buf)
}

// readByte reads the one-byte answer to SSLRequest or GSSENCRequest. It
// must be called before any Receive, which buffers.
func (c *rawClient) readByte() byte {
	c.t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(c.conn, b[:]); err != nil {
		c.t.Fatalf("read one-byte answer: %v", err)
	}
	return b[0]
}

func (c *rawClient) receive() pgproto3.BackendMessage {
	c.t.Helper()
	msg, err := c.fe.Receive()
	if err != nil {
		c.t.Fatalf("receive: %v", err)
	}
	return msg
}

// expectReady reads the greeting up to ReadyForQuery, failing on an
// ErrorResponse, and returns copies of the messages.
func (c *rawClient) expectReady() []pgproto3.BackendMessage {
	c.t.Helper()
	var msgs []pgproto3.BackendMessage
	for {
		msg := cloneBackendMessage(c.receive())
		msgs = append(msgs, msg)
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			c.t.Fatalf("error instead of ReadyForQuery: %s %s %s", m.Severity, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				c.t.Fatalf("ReadyForQuery status %q, want 'I'", m.TxStatus)
			}
			return msgs
		}
	}
}

// expectFatal reads messages until an ErrorResponse, checks that it is
// FATAL with code, then requires the connection to close without further
// messages.
func (c *rawClient) expectFatal(code string) *pgproto3.ErrorResponse {
	c.t.Helper()
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("connection ended without an ErrorResponse (want FATAL %s): %v", code, err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			e = cloneBackendMessage(e).(*pgproto3.ErrorResponse)
			if e.Severity != "FATAL" || e.Code != code {
				c.t.Fatalf("got %s %s %q, want FATAL %s", e.Severity, e.Code, e.Message, code)
			}
			c.expectClosed()
			return e
		}
	}
}

// expectClosed requires the next read to find the connection closed.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	msg, err := c.fe.Receive()
	switch {
	case err == nil:
		c.t.Fatalf("got %T after the connection should have closed", msg)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.t.Fatalf("connection still open after %s", startupDeadline)
	case !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) && !isConnReset(err):
		c.t.Fatalf("want the connection closed, got %v", err)
	}
}

func isConnReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset by peer")
}

// simpleSelectOne runs SELECT 1 and checks the reply.
func (c *rawClient) simpleSelectOne() {
	c.t.Helper()
	c.fe.Send(&pgproto3.Query{String: "SELECT 1"})
	if err := c.fe.Flush(); err != nil {
		c.t.Fatal(err)
	}
	var got []string
	for {
		switch m := c.receive().(type) {
		case *pgproto3.DataRow:
			got = append(got, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			c.t.Fatalf("SELECT 1: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			if len(got) != 1 || got[0] != "1" {
				c.t.Fatalf("SELECT 1 returned %q", got)
			}
			return
		}
	}
}

func brownieStartup(params ...string) *pgproto3.StartupMessage {
	m := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
		"user": "brownie-fastapi-server", "database": "brownie_metadata",
	}}
	for i := 0; i+1 < len(params); i += 2 {
		m.Parameters[params[i]] = params[i+1]
	}
	return m
}

// rawPacket builds an untyped startup-phase packet: length, then body.
func rawPacket(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

func TestStartupAnswersGSSENCAndSSLRequestsWithN(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)

	t.Run("GSSENCRequest then SSLRequest then StartupMessage", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(&pgproto3.GSSEncRequest{})
		if b := c.readByte(); b != 'N' {
			t.Fatalf("GSSENCRequest answered %q, want 'N'", b)
		}
		c.encodeAndWrite(&pgproto3.SSLRequest{})
		if b := c.readByte(); b != 'N' {
			t.Fatalf("SSLRequest answered %q, want 'N'", b)
		}
		c.encodeAndWrite(brownieStartup())
		c.expectReady()
		c.simpleSelectOne()
	})

	t.Run("a second SSLRequest is a protocol violation", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(&pgproto3.SSLRequest{})
		if b := c.readByte(); b != 'N' {
			t.Fatalf("SSLRequest answered %q, want 'N'", b)
		}
		c.encodeAndWrite(&pgproto3.SSLRequest{})
		c.expectFatal("08P01")
	})

	// Postgres lets a client negotiate in either order once a request has
	// been refused (ProcessStartupPacket: "a GSS request should only follow
	// if SSL was rejected (client may negotiate in either order)").
	t.Run("SSLRequest then GSSENCRequest then StartupMessage", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(&pgproto3.SSLRequest{})
		if b := c.readByte(); b != 'N' {
			t.Fatalf("SSLRequest answered %q, want 'N'", b)
		}
		c.encodeAndWrite(&pgproto3.GSSEncRequest{})
		if b := c.readByte(); b != 'N' {
			t.Fatalf("GSSENCRequest after a refused SSLRequest answered %q, want 'N' as Postgres does", b)
		}
		c.encodeAndWrite(brownieStartup())
		c.expectReady()
		c.simpleSelectOne()
	})
	t.Run("a second GSSENCRequest is a protocol violation", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(&pgproto3.GSSEncRequest{})
		if b := c.readByte(); b != 'N' {
			t.Fatalf("GSSENCRequest answered %q, want 'N'", b)
		}
		c.encodeAndWrite(&pgproto3.GSSEncRequest{})
		c.expectFatal("08P01")
	})
}

func TestStartupWithProtocol32AndAnUnknownOptionIsNegotiatedDownTo30(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	c := dialRawClient(t, "tcp", sc.addr)
	m := brownieStartup("_pq_.test", "on")
	m.ProtocolVersion = pgproto3.ProtocolVersion32
	c.encodeAndWrite(m)

	msgs := c.expectReady()
	want := &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: []string{"_pq_.test"}}
	if got, ok := msgs[0].(*pgproto3.NegotiateProtocolVersion); !ok || got.NewestMinorProtocol != 0 || strings.Join(got.UnrecognizedOptions, ",") != "_pq_.test" {
		t.Fatalf("first message %s, want %s", messageText(msgs[0]), messageText(want))
	}
	if _, ok := msgs[1].(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("second message %s, want AuthenticationOk", messageText(msgs[1]))
	}
	for _, msg := range msgs {
		if k, ok := msg.(*pgproto3.BackendKeyData); ok && len(k.SecretKey) != 4 {
			t.Errorf("BackendKeyData secret of %d bytes after negotiating 3.0, want 4", len(k.SecretKey))
		}
	}
	c.simpleSelectOne()
}

func TestStartupPacketsThatAreMalformedAreRefusedAsPostgresRefusesThem(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)

	// A length word out of bounds is not a startup packet at all: Postgres
	// closes the connection without a word ("invalid length of startup
	// packet" goes to its log only), and so does the sidecar.
	t.Run("length over 10000 is closed silently", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.write(binary.BigEndian.AppendUint32(nil, 10001))
		c.expectClosed()
	})
	t.Run("Terminate before the startup packet is closed silently", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.write([]byte{'X', 0, 0, 0, 4}) // node-postgres: connect() then end() at once
		c.expectClosed()
	})
	t.Run("protocol version 2.0", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		body := binary.BigEndian.AppendUint32(nil, 2<<16)
		body = append(body, "user\x00brownie-fastapi-server\x00database\x00brownie_metadata\x00\x00"...)
		c.write(rawPacket(body))
		c.expectFatal("08P01")
	})
	t.Run("length under 8 is closed silently", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.write(binary.BigEndian.AppendUint32(nil, 4))
		c.expectClosed()
	})
	t.Run("no user name", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		body := binary.BigEndian.AppendUint32(nil, pgproto3.ProtocolVersion30)
		body = append(body, "database\x00brownie_metadata\x00\x00"...)
		c.write(rawPacket(body))
		c.expectFatal("08P01")
	})
	t.Run("exactly 10000 bytes is accepted", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		body := binary.BigEndian.AppendUint32(nil, pgproto3.ProtocolVersion30)
		body = append(body, "user\x00brownie-fastapi-server\x00database\x00brownie_metadata\x00brownie.pad\x00"...)
		pad := 10000 - 4 - len(body) - 2 // length word, value terminator, packet terminator
		body = append(body, strings.Repeat("p", pad)...)
		body = append(body, 0, 0)
		packet := rawPacket(body)
		if len(packet) != 10000 {
			t.Fatalf("packet of %d bytes", len(packet))
		}
		c.write(packet)
		c.expectReady()
		c.fe.Send(&pgproto3.Query{String: "SELECT length(current_setting('brownie.pad'))"})
		if err := c.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		for {
			msg := c.receive()
			if d, ok := msg.(*pgproto3.DataRow); ok && string(d.Values[0]) != fmt.Sprint(pad) {
				t.Fatalf("brownie.pad has length %s, want %d", d.Values[0], pad)
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("%s %s", e.Code, e.Message)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	})
	t.Run("the sidecar still serves afterwards", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(brownieStartup())
		c.expectReady()
		c.simpleSelectOne()
	})
}

func TestStartupMessagePipelinedWithAQueryIsServed(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	c := dialRawClient(t, "tcp", sc.addr)
	buf, err := brownieStartup().Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	buf, _ = (&pgproto3.Query{String: "SELECT 1"}).Encode(buf)
	c.write(buf) // one write: the query arrives before the greeting is sent
	c.expectReady()
	var got []string
	for {
		msg := c.receive()
		if d, ok := msg.(*pgproto3.DataRow); ok {
			got = append(got, string(d.Values[0]))
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("%s %s", e.Code, e.Message)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if len(got) != 1 || got[0] != "1" {
		t.Fatalf("pipelined SELECT 1 returned %q", got)
	}
}

func TestStartupTimeoutClosesClientsThatSendNothing(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{"CLIENT_STARTUP_TIMEOUT": "300ms"})

	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"nothing sent", nil},
		{"half a startup packet", binary.BigEndian.AppendUint32(nil, 64)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRawClient(t, "tcp", sc.addr)
			start := time.Now()
			if tc.send != nil {
				c.write(tc.send)
			}
			msg, err := c.fe.Receive()
			if err == nil {
				e, ok := msg.(*pgproto3.ErrorResponse)
				if !ok || e.Severity != "FATAL" {
					t.Fatalf("got %s, want a FATAL error or the close", messageText(msg))
				}
				c.expectClosed()
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open after %s", time.Since(start))
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("closed after %s, want about 300ms", d)
			}
		})
	}
}

func TestStartupRefusesAnUnknownDatabaseOrRoleWithACompleteError(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)

	t.Run("database nope", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(brownieStartup("database", "nope"))
		c.expectFatal("3D000")
	})
	t.Run("user postgres", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(brownieStartup("user", "postgres"))
		c.expectFatal("28000")
	})
}

func TestUnixSocketServesQueries(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	_, port, _ := net.SplitHostPort(sc.addr)
	path := filepath.Join(sc.sockDir, ".s.PGSQL."+port)
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no socket at %s: %v", path, err)
	}

	t.Run("raw", func(t *testing.T) {
		c := dialRawClient(t, "unix", path)
		c.encodeAndWrite(brownieStartup())
		c.expectReady()
		c.simpleSelectOne()
	})
	t.Run("pgx", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s dbname=brownie_metadata user=brownie-fastapi-server", sc.sockDir, port))
		if err != nil {
			t.Fatalf("connect over the Unix socket: %v", err)
		}
		defer conn.Close(context.Background())
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("SELECT 1 = %d, %v", one, err)
		}
	})
}

func TestSCRAMClientsAuthenticateWithTheAuthFile(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(authFile, []byte(`"appuser" "s3cret"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := startSidecar(t, srv, map[string]string{"CLIENT_AUTH_FILE": authFile})
	host, port, _ := net.SplitHostPort(sc.addr)
	dsn := func(password string) string {
		return fmt.Sprintf("host=%s port=%s dbname=brownie_metadata user=appuser password=%s sslmode=disable", host, port, password)
	}

	t.Run("right password", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn("s3cret"))
		if err != nil {
			t.Fatalf("connect as appuser: %v", err)
		}
		defer conn.Close(context.Background())
		var user string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil {
			t.Fatal(err)
		}
		if user != "brownie-fastapi-server" {
			t.Fatalf("current_user = %q, want the upstream role brownie-fastapi-server", user)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn("wrong"))
		if err == nil {
			conn.Close(context.Background())
			t.Fatal("connected with a wrong password")
		}
		if code := pgErrCode(err); code != "28P01" {
			t.Fatalf("error %v (SQLSTATE %q), want 28P01", err, code)
		}
	})
}

func TestClientTLSIsOfferedWhenConfigured(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, map[string]string{
		"CLIENT_TLS_CERT": filepath.Join(srv.CertDir, "server.crt"),
		"CLIENT_TLS_KEY":  filepath.Join(srv.CertDir, "server.key"),
	})
	_, port, _ := net.SplitHostPort(sc.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=localhost port=%s dbname=brownie_metadata user=brownie-fastapi-server sslmode=verify-full sslrootcert=%s",
		port, filepath.Join(srv.CertDir, "ca.crt")))
	if err != nil {
		t.Fatalf("connect with sslmode=verify-full: %v", err)
	}
	defer conn.Close(context.Background())
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("client connection is %T, want *tls.Conn", conn.PgConn().Conn())
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}

	// Bytes sent behind the SSLRequest, before the handshake, are refused
	// as Postgres refuses them (CVE-2021-23214), not taken as sent over
	// TLS.
	c := dialRawClient(t, "tcp", sc.addr)
	buf, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	buf, _ = brownieStartup().Encode(buf)
	c.write(buf)
	if e := c.expectFatal("08P01"); !strings.Contains(e.Message, "unencrypted data after SSL request") {
		t.Fatalf("FATAL %q", e.Message)
	}
}

func TestStartupOptionsAreAppliedUpstream(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	// One upstream connection, so the second session reuses the first's.
	sc := startSidecar(t, srv, map[string]string{"POOL_SIZE": "1"})
	settings := func(t *testing.T, conn *pgx.Conn) (timeout, app string, pid int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := conn.QueryRow(ctx, "SELECT current_setting('statement_timeout'), current_setting('application_name'), pg_backend_pid()").Scan(&timeout, &app, &pid); err != nil {
			t.Fatal(err)
		}
		return timeout, app, pid
	}
	var firstPID int

	t.Run("statement_timeout and application_name", func(t *testing.T) {
		conn := sc.connect(t, "options='-c statement_timeout=1234' application_name=foo")
		timeout, app, pid := settings(t, conn)
		if timeout != "1234ms" || app != "foo" {
			t.Fatalf("statement_timeout %q application_name %q, want 1234ms and foo", timeout, app)
		}
		firstPID = pid
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := conn.QueryRow(ctx, "SHOW statement_timeout").Scan(&timeout); err != nil || timeout != "1234ms" {
			t.Fatalf("SHOW statement_timeout = %q, %v", timeout, err)
		}
		if got := conn.PgConn().ParameterStatus("application_name"); got != "foo" {
			t.Fatalf("ParameterStatus application_name = %q, want foo", got)
		}
	})
	t.Run("the next session on the same upstream gets the defaults", func(t *testing.T) {
		conn := sc.connect(t, "")
		timeout, app, pid := settings(t, conn)
		if pid != firstPID {
			t.Fatalf("second session on upstream backend %d, first on %d: with POOL_SIZE=1 it should be reused", pid, firstPID)
		}
		if timeout != "0" || app != "" {
			t.Fatalf("next session sees statement_timeout %q application_name %q", timeout, app)
		}
		if got := conn.PgConn().ParameterStatus("application_name"); got != "" {
			t.Fatalf("ParameterStatus application_name = %q, want empty", got)
		}
	})
	t.Run("an invalid setting fails with the upstream SQLSTATE", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, sc.dsn("options='-c timezone=Nowhere/Bogus'"))
		if err == nil {
			conn.Close(context.Background())
			t.Fatal("connected with timezone=Nowhere/Bogus")
		}
		if code := pgErrCode(err); code != "22023" {
			t.Fatalf("error %v (SQLSTATE %q), want 22023", err, code)
		}
	})
}

func TestCancelRequestWithAnUnknownKeyIsIgnored(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)

	for _, key := range [][]byte{{1, 2, 3, 4}, make([]byte, 32)} {
		t.Run(fmt.Sprintf("%d-byte key", len(key)), func(t *testing.T) {
			c := dialRawClient(t, "tcp", sc.addr)
			c.encodeAndWrite(&pgproto3.CancelRequest{ProcessID: 424242, SecretKey: key})
			c.expectClosed()
		})
	}
	t.Run("a normal session follows", func(t *testing.T) {
		c := dialRawClient(t, "tcp", sc.addr)
		c.encodeAndWrite(brownieStartup())
		c.expectReady()
		c.simpleSelectOne()
	})
}

func TestAMalformedMessageMidSessionGetsAFatal08P01(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	c := dialRawClient(t, "tcp", sc.addr)
	c.encodeAndWrite(brownieStartup())
	c.expectReady()
	c.simpleSelectOne()
	// A Parse whose parameter count promises two type OIDs but carries none.
	c.write([]byte{'P', 0, 0, 0, 4 + 1 + 9 + 2, 0, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0, 0, 2})
	c.expectFatal("08P01")
	c.expectClosed()
}
