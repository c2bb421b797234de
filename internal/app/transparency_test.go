package app

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// The transparency test runs one scripted conversation twice, straight to
// Postgres over TLS with the client certificate and through the sidecar
// over plain TCP, and requires the same backend messages in both
// transcripts, apart from what necessarily differs between two connections
// (see normaliseTranscript).

// transcriptStep is one exchange of the script: it sends messages and
// receives until ReadyForQuery (or the close, for Terminate).
type transcriptStep struct {
	name string
	// want is the expected sequence of backend message type bytes, checked
	// on the direct transcript so that a broken script is noticed; empty
	// means unchecked.
	want string
	run  func(c *transcriptConn)
}

// transcriptExchange is what came back during one step.
type transcriptExchange struct {
	step string
	msgs []pgproto3.BackendMessage
	// end is "" while the connection is open, "closed" when the server
	// closed it, or the unexpected error that stopped the script.
	end string
}

// transcriptConn drives a pgproto3 Frontend and records every backend
// message.
type transcriptConn struct {
	conn   net.Conn
	fe     *pgproto3.Frontend
	record []*transcriptExchange
	failed error
}

func (c *transcriptConn) cur() *transcriptExchange { return c.record[len(c.record)-1] }

func (c *transcriptConn) send(msgs ...pgproto3.FrontendMessage) {
	if c.failed != nil {
		return
	}
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		c.fail(fmt.Errorf("send: %w", err))
	}
}

func (c *transcriptConn) fail(err error) {
	c.failed = err
	c.cur().end = "error: " + err.Error()
}

// receiveUntil records backend messages until stop returns true for one
// of them (that message included).
func (c *transcriptConn) receiveUntil(stop func(pgproto3.BackendMessage) bool) {
	for c.failed == nil {
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		msg, err := c.fe.Receive()
		if err != nil {
			c.fail(fmt.Errorf("receive: %w", err))
			return
		}
		msg = cloneBackendMessage(msg)
		c.cur().msgs = append(c.cur().msgs, msg)
		if stop(msg) {
			return
		}
	}
}

// receiveReady records backend messages up to and including the n-th
// ReadyForQuery.
func (c *transcriptConn) receiveReady(n int) {
	c.receiveUntil(func(m pgproto3.BackendMessage) bool {
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			n--
		}
		return n == 0
	})
}

// receiveClose records backend messages until the server closes the
// connection.
func (c *transcriptConn) receiveClose() {
	for c.failed == nil {
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		msg, err := c.fe.Receive()
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				c.cur().end = "closed"
			} else {
				c.fail(fmt.Errorf("waiting for close: %w", err))
			}
			return
		}
		c.cur().msgs = append(c.cur().msgs, cloneBackendMessage(msg))
	}
}

// cloneBackendMessage copies msg out of the Frontend's reused buffers by
// encoding it and decoding into a fresh value of the same type.
func cloneBackendMessage(msg pgproto3.BackendMessage) pgproto3.BackendMessage {
	buf, err := msg.Encode(nil)
	if err != nil {
		panic(fmt.Sprintf("re-encode %T: %v", msg, err))
	}
	fresh := reflect.New(reflect.TypeOf(msg).Elem()).Interface().(pgproto3.BackendMessage)
	if err := fresh.Decode(buf[5:]); err != nil {
		panic(fmt.Sprintf("re-decode %T: %v", msg, err))
	}
	return fresh
}

// runTranscript plays steps over conn and returns what came back.
func runTranscript(conn net.Conn, steps []transcriptStep) []*transcriptExchange {
	c := &transcriptConn{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	for _, s := range steps {
		c.record = append(c.record, &transcriptExchange{step: s.name})
		if c.failed != nil {
			c.cur().end = "not run"
			continue
		}
		s.run(c)
	}
	return c.record
}

func simpleQuery(sql string) func(*transcriptConn) {
	return func(c *transcriptConn) {
		c.send(&pgproto3.Query{String: sql})
		c.receiveReady(1)
	}
}

func int4Binary(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

// transparencyScript is the conversation: table is created, used and
// dropped by it.
func transparencyScript(table string) []transcriptStep {
	q := func(format string) string { return strings.ReplaceAll(format, "$tbl", table) }
	return []transcriptStep{
		{name: "startup", run: func(c *transcriptConn) {
			c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
				"user": "brownie-fastapi-server", "database": "brownie_metadata",
				"application_name": "transparency", "options": "-c timezone=UTC",
			}})
			c.receiveReady(1)
		}},
		{name: "create table and insert", want: "CCZ", run: simpleQuery(q(
			`CREATE TABLE $tbl (id int PRIMARY KEY, name text, payload bytea);
			 INSERT INTO $tbl VALUES (1, 'one', '\x0102'), (2, 'two', NULL), (3, 'three', '\x'), (4, 'four', '\xff')`))},
		{name: "rows of several types", want: "TDDCZ", run: simpleQuery(
			`SELECT 1::int AS i, 'text'::text AS t, NULL::int AS n, '\xdeadbeef'::bytea AS b,
			        '2024-02-29 12:34:56.789+00'::timestamptz AS ts, 12345.6789::numeric AS num, '{"a": [1, 2, null]}'::json AS j
			 UNION ALL
			 SELECT -2, '', NULL, '\x', 'infinity', 'NaN', 'null'`)},
		{name: "rows from the table", want: "TDDDDCZ", run: simpleQuery(q(`SELECT id, name, payload FROM $tbl ORDER BY id`))},
		{name: "multi-statement query with an error in the middle", want: "TDCEZ", run: simpleQuery(
			`SELECT 1 AS a; SELECT 1/0 AS b; SELECT 3 AS c`)},
		{name: "empty query", want: "IZ", run: simpleQuery("")},
		{name: "unnamed statement, text formats", want: "12TDDCZ", run: func(c *transcriptConn) {
			c.send(
				&pgproto3.Parse{Query: q(`SELECT id, name, payload FROM $tbl WHERE id <= $1 ORDER BY id`), ParameterOIDs: []uint32{23}},
				&pgproto3.Bind{ParameterFormatCodes: []int16{0}, Parameters: [][]byte{[]byte("2")}, ResultFormatCodes: []int16{0}},
				&pgproto3.Describe{ObjectType: 'P'},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			)
			c.receiveReady(1)
		}},
		{name: "unnamed statement, binary formats", want: "12TDDDCZ", run: func(c *transcriptConn) {
			c.send(
				&pgproto3.Parse{Query: q(`SELECT id, name, payload, now() - now() AS zero FROM $tbl WHERE id <= $1 ORDER BY id`), ParameterOIDs: []uint32{23}},
				&pgproto3.Bind{ParameterFormatCodes: []int16{1}, Parameters: [][]byte{int4Binary(3)}, ResultFormatCodes: []int16{1}},
				&pgproto3.Describe{ObjectType: 'P'},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			)
			c.receiveReady(1)
		}},
		{name: "named statement prepared", want: "1Z", run: func(c *transcriptConn) {
			c.send(&pgproto3.Parse{Name: "ins", Query: q(`INSERT INTO $tbl (id, name) VALUES ($1, $2) RETURNING id, name`)}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "named statement executed once", want: "2DCZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("10"), []byte("ten")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "named statement executed twice", want: "2DCZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("11"), []byte("eleven")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "describe statement before bind", want: "1tTZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Parse{Name: "sel", Query: q(`SELECT name FROM $tbl WHERE id = $1`)}, &pgproto3.Describe{ObjectType: 'S', Name: "sel"}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "bind after describe", want: "2DCZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Bind{PreparedStatement: "sel", Parameters: [][]byte{[]byte("10")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "close statements", want: "33Z", run: func(c *transcriptConn) {
			c.send(&pgproto3.Close{ObjectType: 'S', Name: "sel"}, &pgproto3.Close{ObjectType: 'S', Name: "ins"}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "begin", want: "CZ", run: simpleQuery("BEGIN")},
		{name: "execute with a row limit", want: "12DDsDDsZ", run: func(c *transcriptConn) {
			c.send(
				&pgproto3.Parse{Query: q(`SELECT id FROM $tbl ORDER BY id`)},
				&pgproto3.Bind{DestinationPortal: "cur"},
				&pgproto3.Execute{Portal: "cur", MaxRows: 2},
				&pgproto3.Execute{Portal: "cur", MaxRows: 2},
				&pgproto3.Sync{},
			)
			c.receiveReady(1)
		}},
		{name: "execute the rest of the portal", want: "DDCZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Execute{Portal: "cur"}, &pgproto3.Sync{})
			c.receiveReady(1)
		}},
		{name: "commit", want: "CZ", run: simpleQuery("COMMIT")},
		{name: "pipeline of two syncs", want: "12TDCZ12TDCZ", run: func(c *transcriptConn) {
			c.send(
				&pgproto3.Parse{Query: "SELECT 1 AS one"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Parse{Query: "SELECT 'two' AS two"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
			)
			c.receiveReady(2)
		}},
		{name: "error in a pipeline skips to sync", want: "12EZ12DCZ", run: func(c *transcriptConn) {
			c.send(
				&pgproto3.Parse{Query: "SELECT 1/(g - 1) FROM generate_series(1, 1) g"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELECT 2"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Sync{},
				&pgproto3.Parse{Query: "SELECT 3"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Sync{},
			)
			c.receiveReady(2)
		}},
		{name: "copy from stdin", want: "GCZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Query{String: q(`COPY $tbl (id, name, payload) FROM STDIN`)})
			c.receiveUntil(func(m pgproto3.BackendMessage) bool {
				_, isCopyIn := m.(*pgproto3.CopyInResponse)
				_, isReady := m.(*pgproto3.ReadyForQuery)
				return isCopyIn || isReady
			})
			c.send(
				&pgproto3.CopyData{Data: []byte("20\ttwenty\t\\\\x00ff\n")},
				&pgproto3.CopyData{Data: []byte("21\t\\N\t\\N\n")},
				&pgproto3.CopyDone{},
			)
			c.receiveReady(1)
		}},
		{name: "copy from stdin failed by the client", want: "GEZ", run: func(c *transcriptConn) {
			c.send(&pgproto3.Query{String: q(`COPY $tbl (id, name) FROM STDIN`)})
			c.receiveUntil(func(m pgproto3.BackendMessage) bool {
				_, isCopyIn := m.(*pgproto3.CopyInResponse)
				_, isReady := m.(*pgproto3.ReadyForQuery)
				return isCopyIn || isReady
			})
			c.send(&pgproto3.CopyData{Data: []byte("30\tthirty\n")}, &pgproto3.CopyFail{Message: "client changed its mind"})
			c.receiveReady(1)
		}},
		{name: "copy to stdout", want: "HddddddddcCZ", run: simpleQuery(q(`COPY (SELECT id, name, payload FROM $tbl ORDER BY id) TO STDOUT`))},
		{name: "notice", want: "NCZ", run: simpleQuery(`DO $$ BEGIN RAISE NOTICE 'x'; END $$`)},
		{name: "set application_name", want: "CSZ", run: simpleQuery(`SET application_name = 'transparency2'`)},
		{name: "listen", want: "CZ", run: simpleQuery(`LISTEN transparency_channel`)},
		{name: "notify", want: "CAZ", run: simpleQuery(`NOTIFY transparency_channel, 'payload'`)},
		{name: "drop table", want: "CZ", run: simpleQuery(q(`DROP TABLE $tbl`))},
		{name: "terminate", run: func(c *transcriptConn) {
			c.send(&pgproto3.Terminate{})
			c.receiveClose()
		}},
	}
}

// dialPostgresWithClientCert opens a TLS connection straight to srv's
// primary the way the sidecar does: SSLRequest, then TLS presenting the
// client certificate.
func dialPostgresWithClientCert(t *testing.T, srv *pgtest.Server) net.Conn {
	t.Helper()
	raw, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.Primary.Port())), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := raw.Write(req); err != nil {
		t.Fatal(err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest to Postgres: answer %q, %v", answer[0], err)
	}
	caPEM, err := os.ReadFile(filepath.Join(srv.CertDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no certificate in ca.crt")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(srv.CertDir, "client.crt"), filepath.Join(srv.CertDir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, &tls.Config{ServerName: "localhost", RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err := conn.Handshake(); err != nil {
		t.Fatalf("TLS handshake with Postgres: %v", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn
}

func dialSidecarTCP(t *testing.T, sc *sidecar) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", sc.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// normaliseTranscript removes what legitimately differs between two
// connections and keeps everything else:
//   - BackendKeyData values are zeroed (keeping the secret's length);
//   - a NotificationResponse PID becomes 1 when it is the session's own
//     backend PID (as given in BackendKeyData) and 2 otherwise, since a
//     client recognises its own notifications by that comparison;
//   - RowDescription table OIDs become 1 when set, as the script creates
//     its table afresh in each run;
//   - ErrorResponse and NoticeResponse lose File, Line and Routine (the
//     rest, from Severity, Code, Message, Detail, Hint and Position to
//     Where and the schema/table/constraint names, must match);
//   - during startup, ParameterStatus messages are compared as a set
//     (separately, see compareTranscripts) and removed from the sequence.
func normaliseTranscript(x []*transcriptExchange) []*transcriptExchange {
	var ownPID uint32
	out := make([]*transcriptExchange, len(x))
	for i, e := range x {
		n := &transcriptExchange{step: e.step, end: e.end}
		for _, m := range e.msgs {
			switch m := m.(type) {
			case *pgproto3.BackendKeyData:
				ownPID = m.ProcessID
				n.msgs = append(n.msgs, &pgproto3.BackendKeyData{SecretKey: make([]byte, len(m.SecretKey))})
			case *pgproto3.NotificationResponse:
				c := *m
				c.PID = 2
				if m.PID == ownPID {
					c.PID = 1
				}
				n.msgs = append(n.msgs, &c)
			case *pgproto3.RowDescription:
				c := pgproto3.RowDescription{Fields: slices.Clone(m.Fields)}
				for j := range c.Fields {
					if c.Fields[j].TableOID != 0 {
						c.Fields[j].TableOID = 1
					}
				}
				n.msgs = append(n.msgs, &c)
			case *pgproto3.ErrorResponse:
				c := *m
				c.File, c.Line, c.Routine = "", 0, ""
				n.msgs = append(n.msgs, &c)
			case *pgproto3.NoticeResponse:
				c := *m
				c.File, c.Line, c.Routine = "", 0, ""
				n.msgs = append(n.msgs, &c)
			case *pgproto3.ParameterStatus:
				if i == 0 {
					continue // compared as a set
				}
				n.msgs = append(n.msgs, m)
			default:
				n.msgs = append(n.msgs, m)
			}
		}
		out[i] = n
	}
	return out
}

// startupParameters returns the ParameterStatus messages of the startup
// step as name → value, and how many there were.
func startupParameters(x []*transcriptExchange) (map[string]string, int) {
	params := map[string]string{}
	n := 0
	if len(x) == 0 {
		return params, 0
	}
	for _, m := range x[0].msgs {
		if ps, ok := m.(*pgproto3.ParameterStatus); ok {
			params[ps.Name] = ps.Value
			n++
		}
	}
	return params, n
}

func messageText(m pgproto3.BackendMessage) string {
	if m == nil {
		return "(none)"
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Sprintf("%T %+v", m, m)
	}
	return string(b)
}

func messageTypes(msgs []pgproto3.BackendMessage) string {
	var b strings.Builder
	for _, m := range msgs {
		buf, err := m.Encode(nil)
		if err == nil && len(buf) > 0 {
			b.WriteByte(buf[0])
		}
	}
	return b.String()
}

// compareTranscripts returns a readable description of every difference
// between the direct and the sidecar transcript, or "".
func compareTranscripts(direct, sidecar []*transcriptExchange) string {
	var b strings.Builder
	dp, dn := startupParameters(direct)
	sp, sn := startupParameters(sidecar)
	if dn != sn || !reflect.DeepEqual(dp, sp) {
		fmt.Fprintf(&b, "step \"startup\": ParameterStatus differ (direct %d messages, sidecar %d)\n", dn, sn)
		names := map[string]bool{}
		for k := range dp {
			names[k] = true
		}
		for k := range sp {
			names[k] = true
		}
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range names {
				if !yield(k) {
					return
				}
			}
		}) {
			dv, dok := dp[k]
			sv, sok := sp[k]
			if dv != sv || dok != sok {
				fmt.Fprintf(&b, "  %s: direct %s, sidecar %s\n", k, presentValue(dv, dok), presentValue(sv, sok))
			}
		}
	}
	nd, ns := normaliseTranscript(direct), normaliseTranscript(sidecar)
	for i := range max(len(nd), len(ns)) {
		var d, s *transcriptExchange
		if i < len(nd) {
			d = nd[i]
		}
		if i < len(ns) {
			s = ns[i]
		}
		if d == nil || s == nil {
			fmt.Fprintf(&b, "step %d present in only one transcript\n", i)
			continue
		}
		if reflect.DeepEqual(d.msgs, s.msgs) && d.end == s.end {
			continue
		}
		fmt.Fprintf(&b, "step %q differs:\n", d.step)
		for j := range max(len(d.msgs), len(s.msgs)) {
			var dm, sm pgproto3.BackendMessage
			if j < len(d.msgs) {
				dm = d.msgs[j]
			}
			if j < len(s.msgs) {
				sm = s.msgs[j]
			}
			mark := " "
			if !reflect.DeepEqual(dm, sm) {
				mark = "!"
			}
			fmt.Fprintf(&b, " %s [%d] direct:  %s\n", mark, j, messageText(dm))
			if mark == "!" {
				fmt.Fprintf(&b, " %s [%d] sidecar: %s\n", mark, j, messageText(sm))
			}
		}
		if d.end != s.end {
			fmt.Fprintf(&b, " ! end: direct %q, sidecar %q\n", d.end, s.end)
		}
	}
	return b.String()
}

func presentValue(v string, ok bool) string {
	if !ok {
		return "(absent)"
	}
	return strconv.Quote(v)
}

func randomSuffix(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func TestTransparencyOfAScriptedConversationStraightAndThroughTheSidecar(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	script := transparencyScript("transparency_" + randomSuffix(t))

	direct := runTranscript(dialPostgresWithClientCert(t, srv), script)
	for i, e := range direct {
		if e.end != "" && e.end != "closed" {
			t.Fatalf("direct run failed at step %q: %s", e.step, e.end)
		}
		if want := script[i].want; want != "" {
			if got := messageTypes(e.msgs); got != want {
				t.Errorf("script check: step %q straight to Postgres returned message types %q, the script expects %q", e.step, got, want)
			}
		}
	}
	if last := direct[len(direct)-1]; last.end != "closed" {
		t.Errorf("Postgres did not close the connection after Terminate: %q", last.end)
	}
	if t.Failed() {
		t.FailNow()
	}

	through := runTranscript(dialSidecarTCP(t, sc), script)
	if diff := compareTranscripts(direct, through); diff != "" {
		t.Errorf("transcripts differ (straight to Postgres vs through the sidecar):\n%s", diff)
	}
}

func TestTransparencyOfResetAfterStartupSettings(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	script := []transcriptStep{
		transparencyScript("unused")[0], // startup with application_name and -c timezone=UTC
		{name: "set", want: "CCSSZ", run: simpleQuery(`SET application_name = 'changed'; SET timezone = 'America/New_York'`)},
		{name: "reset all", want: "CSSZ", run: simpleQuery(`RESET ALL`)},
		{name: "show after reset", want: "TDCZ", run: simpleQuery(`SELECT current_setting('application_name'), current_setting('TimeZone')`)},
		{name: "terminate", run: func(c *transcriptConn) {
			c.send(&pgproto3.Terminate{})
			c.receiveClose()
		}},
	}
	direct := runTranscript(dialPostgresWithClientCert(t, srv), script)
	for i, e := range direct {
		if want := script[i].want; want != "" {
			if got := messageTypes(e.msgs); got != want {
				t.Errorf("script check: step %q straight to Postgres returned message types %q, the script expects %q", e.step, got, want)
			}
		}
	}
	through := runTranscript(dialSidecarTCP(t, sc), script)
	if diff := compareTranscripts(direct, through); diff != "" {
		t.Errorf("transcripts differ (straight to Postgres vs through the sidecar):\n%s", diff)
	}
}
