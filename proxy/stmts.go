package proxy

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/internal/sqltext"
	"github.com/brownie/brownie-sidecar/internal/wire"
)

// stmtDef is a statement a client prepared: its text and parameter types.
// Many clients preparing the same text under the same schema generation
// (see Server.schemaGen) share one key, so the statement is prepared once
// per upstream connection; a client preparing it again after a schema
// change gets a new key, so a fresh statement, as it would from Postgres.
// Immutable.
type stmtDef struct {
	key   string
	query string
	oids  []uint32
	gen   uint64 // the schema generation it was prepared under
	a     *analysis
	// poison marks a statement refused by POOL_PIN_POLICY=error: binding
	// it runs the refusal instead.
	poison bool
	// desc is the statement's result description (resultDesc) as first
	// prepared upstream for the client, "" until known; resultChanged
	// says a later preparation's differs, so binding the statement fails
	// as in Postgres, whose prepared statement keeps the result type it
	// was prepared with. Both are set under the owning session's mu (by
	// its relay goroutine, or by its session goroutine on a cache hit).
	desc          string
	resultChanged bool
	// fixedResult says the statement is a query or a DML statement, whose
	// result columns Postgres fixes when preparing it; a utility
	// statement's (FETCH) may depend on the state it runs in.
	fixedResult bool
	// variants are the statement's rewrites for requests spanning shards
	// (package fanout: a merge's ShardSQL, a replicated write's pinned
	// time), most recent first, at most maxVariants; set by the session
	// goroutine of the client owning def.
	variants []*stmtDef
}

// maxVariants bounds the rewrites kept with a statement.
const maxVariants = 4

var _ fanout.Stmt = (*stmtDef)(nil)

// SQL is the statement's text.
func (d *stmtDef) SQL() string { return d.query }

// Variant returns the statement with text sql and the same parameter
// types, kept with d so that it is prepared once per upstream. Session
// goroutine only.
func (d *stmtDef) Variant(sql string) fanout.Stmt {
	if sql == d.query {
		return d
	}
	for _, v := range d.variants {
		if v.query == sql {
			return v
		}
	}
	v := newStmtDef(sql, d.oids, d.a, d.gen)
	d.variants = append([]*stmtDef{v}, d.variants[:min(len(d.variants), maxVariants-1)]...)
	return v
}

func newStmtDef(query string, oids []uint32, a *analysis, gen uint64) *stmtDef {
	return &stmtDef{key: stmtKey(query, oids, gen), query: query, oids: oids, gen: gen, a: a, fixedResult: plannable(query)}
}

// plannable reports whether a statement text starts as a query or a DML
// statement does (SELECT, VALUES, TABLE, WITH, INSERT, UPDATE, DELETE,
// MERGE, or a parenthesised query), after whitespace and comments.
func plannable(query string) bool {
	q := query[sqltext.SkipSpace(query, 0):]
	if strings.HasPrefix(q, "(") {
		return true
	}
	end := 0
	for end < len(q) && (q[end]|0x20 >= 'a' && q[end]|0x20 <= 'z') {
		end++
	}
	switch strings.ToLower(q[:end]) {
	case "select", "values", "table", "with", "insert", "update", "delete", "merge":
		return true
	}
	return false
}

// newUnnamedDef records an unnamed statement. It needs no key: the
// unnamed statement is matched by identity, never shared.
func newUnnamedDef(query string, oids []uint32, a *analysis) *stmtDef {
	return &stmtDef{query: query, oids: oids, a: a}
}

func stmtKey(query string, oids []uint32, gen uint64) string {
	h := sha256.New()
	var g [8]byte
	binary.BigEndian.PutUint64(g[:], gen)
	h.Write(g[:])
	h.Write([]byte(query))
	var b [4]byte
	for _, o := range oids {
		binary.BigEndian.PutUint32(b[:], o)
		h.Write(b[:])
	}
	return string(h.Sum(nil)[:16])
}

// stmtCache is the set of statements prepared on one upstream connection
// under sidecar-chosen names, bounded with LRU eviction. It is guarded by
// the mutex of the session the connection is attached to (at most one at a
// time), so it needs no lock of its own.
type stmtCache struct {
	max   int
	next  uint64
	ll    list.List // of *cachedStmt, most recently used first
	byKey map[string]*list.Element
}

type cachedStmt struct {
	key       string
	name      string
	confirmed bool   // the server answered ParseComplete
	desc      string // its result description (resultDesc), "" until described
}

func newStmtCache(max int) *stmtCache {
	return &stmtCache{max: max, byKey: map[string]*list.Element{}}
}

// lookup returns the server-side name of key, marking it recently used.
func (c *stmtCache) lookup(key string) (string, bool) {
	cs, ok := c.entry(key)
	if !ok {
		return "", false
	}
	return cs.name, true
}

// add records key under a new server-side name and returns it, together
// with the names of confirmed statements to close to stay within bounds.
func (c *stmtCache) add(key string) (name string, evict []string) {
	c.next++
	name = "brw_" + strconv.FormatUint(c.next, 10)
	c.byKey[key] = c.ll.PushFront(&cachedStmt{key: key, name: name})
	for el := c.ll.Back(); c.ll.Len() > c.max && el != nil; {
		prev := el.Prev()
		if cs := el.Value.(*cachedStmt); cs.confirmed {
			c.ll.Remove(el)
			delete(c.byKey, cs.key)
			evict = append(evict, cs.name)
		}
		el = prev
	}
	return name, evict
}

// entry returns key's statement, marking it recently used.
func (c *stmtCache) entry(key string) (*cachedStmt, bool) {
	el, ok := c.byKey[key]
	if !ok {
		return nil, false
	}
	c.ll.MoveToFront(el)
	return el.Value.(*cachedStmt), true
}

// described records key's result description.
func (c *stmtCache) described(key, desc string) {
	if el, ok := c.byKey[key]; ok {
		el.Value.(*cachedStmt).desc = desc
	}
}

func (c *stmtCache) confirm(key string) {
	if el, ok := c.byKey[key]; ok {
		el.Value.(*cachedStmt).confirmed = true
	}
}

// forget drops key (its Parse failed, so the server does not have it).
func (c *stmtCache) forget(key string) {
	if el, ok := c.byKey[key]; ok {
		c.ll.Remove(el)
		delete(c.byKey, key)
	}
}

func (c *stmtCache) clear() {
	c.ll.Init()
	clear(c.byKey)
}

func (c *stmtCache) len() int { return c.ll.Len() }

var errMalformed = errors.New("malformed message")

// cstr reads a NUL-terminated string at the start of b.
func cstr(b []byte) (string, []byte, error) {
	str, rest, ok := wire.CString(b)
	if !ok {
		return "", nil, errMalformed
	}
	return str, rest, nil
}

// parseMsg is a decoded Parse message.
type parseMsg struct {
	name, query string
	oids        []uint32
}

// decodeParse decodes a Parse body. prev is an earlier Parse of the
// caller's: when this one carries the same text, m.query is prev's text
// itself, and when it carries the same parameter types, m.oids is prev's
// slice (never written after decoding), so a client preparing the same
// statement for every transaction (an unnamed statement, as most drivers
// use) costs no allocation for it.
func decodeParse(body []byte, prev *parseMsg) (parseMsg, error) {
	var m parseMsg
	var err error
	if m.name, body, err = cstr(body); err != nil {
		return m, err
	}
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return m, errMalformed
	}
	if string(body[:i]) == prev.query {
		m.query = prev.query
	} else {
		m.query = string(body[:i])
	}
	body = body[i+1:]
	if len(body) < 2 {
		return m, errMalformed
	}
	n := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) != 4*n {
		return m, errMalformed
	}
	switch {
	case n == 0:
		return m, nil
	case sameOIDs(body, prev.oids):
		m.oids = prev.oids
		return m, nil
	}
	m.oids = make([]uint32, n)
	for i := range m.oids {
		m.oids[i] = binary.BigEndian.Uint32(body[4*i:])
	}
	return m, nil
}

// sameOIDs reports whether the encoded parameter types b are oids.
func sameOIDs(b []byte, oids []uint32) bool {
	if len(b) != 4*len(oids) {
		return false
	}
	for i, o := range oids {
		if binary.BigEndian.Uint32(b[4*i:]) != o {
			return false
		}
	}
	return true
}

func appendParse(dst []byte, name, query string, oids []uint32) []byte {
	start := len(dst)
	dst = append(dst, 'P', 0, 0, 0, 0)
	dst = append(append(dst, name...), 0)
	dst = append(append(dst, query...), 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(oids)))
	for _, o := range oids {
		dst = binary.BigEndian.AppendUint32(dst, o)
	}
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// appendClose appends Close of a statement ('S') or portal ('P').
func appendClose(dst []byte, kind byte, name string) []byte {
	dst = append(dst, 'C')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(name)+1))
	dst = append(dst, kind)
	return append(append(dst, name...), 0)
}

// appendDescribeStmt appends a Describe of statement name.
func appendDescribeStmt(dst []byte, name string) []byte {
	dst = wire.AppendHeader(dst, 'D', 1+len(name)+1)
	dst = append(dst, 'S')
	return append(append(dst, name...), 0)
}

// firstUserOID is Postgres's FirstNormalObjectId: objects created after
// initdb, user-defined types among them, have OIDs from here on.
const firstUserOID = 16384

// resultDesc reduces the answer to a Describe of a statement, NoData ('n')
// or RowDescription ('T'), to what Postgres compares when it checks that a
// prepared statement still returns what it was prepared to: the number of
// columns and each one's name, type and type modifier. What differs
// between shards holding the same schema is left out: the table a column
// comes from, and the OID of a user-defined type (an enum, a domain),
// which each database assigns itself; such a column's type is recorded
// only as user-defined. It returns "" for a malformed RowDescription.
func resultDesc(typ byte, body []byte) string {
	if typ == 'n' {
		return "n"
	}
	if len(body) < 2 {
		return ""
	}
	n := int(binary.BigEndian.Uint16(body))
	b := body[2:]
	out := make([]byte, 0, len(body))
	out = append(out, 'T')
	out = binary.BigEndian.AppendUint16(out, uint16(n))
	for range n {
		i := bytes.IndexByte(b, 0)
		if i < 0 || len(b) < i+1+18 {
			return ""
		}
		out = append(out, b[:i+1]...)             // name
		oid := binary.BigEndian.Uint32(b[i+1+6:]) // type OID, after table OID and column number
		if oid >= firstUserOID {
			oid = firstUserOID
		}
		out = binary.BigEndian.AppendUint32(out, oid)
		out = append(out, b[i+1+12:i+1+12+4]...) // type modifier, after type size
		b = b[i+1+18:]
	}
	if len(b) != 0 {
		return ""
	}
	return string(out)
}

// bindHeader splits the start of a Bind body: portal and statement names
// and the offset of the rest. Only this prefix is needed to rename the
// statement, so large Binds can be streamed.
func bindHeader(prefix []byte) (portal, stmt string, rest int, err error) {
	portal, r, err := cstr(prefix)
	if err != nil {
		return "", "", 0, err
	}
	stmt, r, err = cstr(r)
	if err != nil {
		return "", "", 0, err
	}
	return portal, stmt, len(prefix) - len(r), nil
}
