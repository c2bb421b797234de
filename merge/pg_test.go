package merge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// This file checks the merge against real PostgreSQL: the same rows are
// loaded into one database ("whole") and split by team over two shard
// databases (p0, p1) and over three (s0, s1, s2); every generated query
// runs on the whole database as the client wrote it and on the shards as
// ShardSQL, and Run's merge of the shards' wire rows must be what the whole
// database answered, byte for byte, in text and binary formats.

// pgEnv is one running cluster with the test databases.
type pgEnv struct {
	cluster *pgcluster.Cluster
	conns   map[string]*pgconn.PgConn
	enums   map[uint32]map[string]float64
}

// testSchema is created in every database. The enum's sort order differs
// from its labels' text order, and 'URGENT' gets a fractional sort order.
const testSchema = `
CREATE TYPE prio AS ENUM ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL');
ALTER TYPE prio ADD VALUE 'URGENT' BEFORE 'CRITICAL';
CREATE TABLE items (
    id int4 PRIMARY KEY,
    team int4 NOT NULL,
    u uuid,
    t text,
    v varchar(20),
    p prio,
    i4 int4,
    i8 int8,
    n numeric,
    b boolean,
    ts timestamptz,
    j jsonb,
    d date,
    f float8,
    iv interval,
    c char(4)
);
`

// The shard sets: database names, and the team rule placing a row.
var shardSets = []struct {
	name string
	dbs  []string
}{
	{"two shards", []string{"p0", "p1"}},
	{"three shards", []string{"s0", "s1", "s2"}},
}

// startPG starts one cluster and loads rows generated from rng into every
// database.
func startPG(t *testing.T, rng *rand.Rand, nrows int) *pgEnv {
	t.Helper()
	srv := pgtest.Start(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	env := &pgEnv{cluster: srv.Primary, conns: map[string]*pgconn.PgConn{}, enums: map[uint32]map[string]float64{}}
	dbs := []string{"whole", "p0", "p1", "s0", "s1", "s2"}
	rows := genRows(rng, nrows)
	start := time.Now()
	defer func() { t.Logf("databases loaded in %v", time.Since(start)) }()
	for _, db := range dbs {
		if _, err := env.cluster.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
		var ins strings.Builder
		ins.WriteString(testSchema)
		var vals []string
		for _, r := range rows {
			if keep(db, r.team) {
				vals = append(vals, "("+strings.Join(r.vals, ", ")+")")
			}
		}
		if len(vals) > 0 {
			fmt.Fprintf(&ins, "INSERT INTO items VALUES %s;\n", strings.Join(vals, ",\n"))
		}
		if _, err := env.cluster.Exec(ctx, db, ins.String()); err != nil {
			t.Fatal(err)
		}
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=%s timezone=America/St_Johns",
			env.cluster.SocketDir(), env.cluster.Port(), db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		env.conns[db] = conn
		res, err := conn.Exec(ctx, "SELECT enumtypid::int8, enumlabel, enumsortorder::float8 FROM pg_enum").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res[0].Rows {
			oid, _ := strconv.ParseUint(string(r[0]), 10, 32)
			pos, _ := strconv.ParseFloat(string(r[2]), 64)
			if env.enums[uint32(oid)] == nil {
				env.enums[uint32(oid)] = map[string]float64{}
			}
			env.enums[uint32(oid)][string(r[1])] = pos
		}
	}
	return env
}

// keep says whether database db holds the rows of team.
func keep(db string, team int) bool {
	switch db {
	case "whole":
		return true
	case "p0", "p1":
		return strconv.Itoa(team%2) == db[1:]
	}
	return strconv.Itoa(team%3) == db[1:]
}

func (e *pgEnv) options() Options {
	return Options{EnumOrder: func(oid uint32) (map[string]float64, bool) {
		m, ok := e.enums[oid]
		return m, ok
	}}
}

// genRow is one generated row as SQL literals.
type genRow struct {
	team int
	vals []string
}

// Value pools. Values that are equal for PostgreSQL always have the same
// text here (no 1.5 next to 1.50, no '1 mon' next to '30 days', no -0),
// because which of two equal values a group or min() shows is not
// determined even on one server.
var (
	poolText = []string{"''", "'a'", "'A'", "'b'", "'ab'", "'a b'", "'a '", "'é'", "'日本'", "'z'", "'Zed'", "'a\tb'", "'~'"}
	poolEnum = []string{"'LOW'", "'MEDIUM'", "'HIGH'", "'URGENT'", "'CRITICAL'"}
	poolTS   = []string{"'2024-01-02 03:04:05+00'", "'2024-01-02 03:04:05.123456+00'", "'2024-01-02 03:04:05.5-07'",
		"'1999-12-31 23:59:59.999999+00'", "'2000-01-01 00:00:00+00'", "'1880-01-01 12:00:00+00'",
		"'0044-03-15 12:00:00+00 BC'", "'infinity'", "'-infinity'", "'2024-06-30 12:00:00+05:30'", "'12345-01-01 00:00:00+00'"}
	poolJSON = []string{`'null'`, `'true'`, `'false'`, `'1'`, `'1.5'`, `'-2'`, `'"str"'`, `'""'`, `'"a"'`, `'[]'`, `'[1]'`,
		`'[1, 2]'`, `'[null]'`, `'[[1]]'`, `'[{"a": 1}]'`, `'{}'`, `'{"a": 1}'`, `'{"a": 2}'`, `'{"b": 1}'`, `'{"aa": 1}'`,
		`'{"a": 1, "b": 2}'`, `'{"a": [1, 2]}'`, `'{"a": "x\"y"}'`, `'123456789012345678901234567890'`, `'{"b": null, "ab": true}'`}
	poolDate  = []string{"'2024-01-02'", "'2000-01-01'", "'1999-12-31'", "'0001-01-01 BC'", "'4713-11-24 BC'", "'infinity'", "'-infinity'", "'5874897-12-31'"}
	poolFloat = []string{"0", "1.5", "-1.5", "1e300", "-1e-300", "'NaN'", "'Infinity'", "'-Infinity'", "3.14159", "1e15", "123456789012345.6", "2.5e-5"}
	poolIv    = []string{"'1 day 02:03:04'", "'-1 days +01:00:00'", "'00:00:00.5'", "'3 days'", "'-02:00:00'", "'00:00:00'", "'1 mon'", "'2 mons 3 days'", "'5 days -00:00:01'", "'1 year'"}
	poolChar  = []string{"'a'", "'ab'", "'abcd'", "''", "'b'"}
	poolI4    = []string{"0", "1", "-1", "2", "3", "-5", "7", "2147483647", "-2147483648", "42"}
	poolI8    = []string{"0", "1", "-1", "10", "9223372036854775807", "-9223372036854775808", "1000000000000", "-77", "5"}
)

func genRows(rng *rand.Rand, n int) []genRow {
	uuids := make([]string, 12)
	for i := range uuids {
		var u [16]byte
		for j := range u {
			u[j] = byte(rng.UintN(256))
		}
		if i == 0 {
			u = [16]byte{}
		}
		uuids[i] = fmt.Sprintf("'%x-%x-%x-%x-%x'", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	}
	pick := func(pool []string) string {
		if rng.IntN(7) == 0 {
			return "NULL"
		}
		return pool[rng.IntN(len(pool))]
	}
	numeric := func() string {
		switch rng.IntN(40) {
		case 0:
			return "'NaN'"
		case 1:
			return "'Infinity'"
		case 2:
			return "'-Infinity'"
		case 3:
			return "12345678901234567890.125"
		}
		if rng.IntN(7) == 0 {
			return "NULL"
		}
		u := rng.IntN(4001) - 2000
		scale := 2 + abs(u)%3 // a function of the value: equal values, equal text
		return strconv.FormatFloat(float64(u)/100, 'f', scale, 64)
	}
	rows := make([]genRow, n)
	for i := range rows {
		team := 1 + rng.IntN(7)
		rows[i] = genRow{team: team, vals: []string{
			strconv.Itoa(i + 1), strconv.Itoa(team), pick(uuids), pick(poolText), pick(poolText), pick(poolEnum),
			pick(poolI4), pick(poolI8), numeric(), pick([]string{"true", "false"}), pick(poolTS), pick(poolJSON),
			pick(poolDate), pick(poolFloat), pick(poolIv), pick(poolChar),
		}}
	}
	return rows
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// result is one statement's answer as wire bodies.
type result struct {
	stmtDesc  []byte // the statement's RowDescription (formats 0)
	rowDesc   []byte // the portal's (actual formats)
	paramOIDs []uint32
	rows      [][]byte
}

func rowDescOf(fds []pgconn.FieldDescription) []byte {
	fs := make([]field, len(fds))
	for i, f := range fds {
		fs[i] = field{name: []byte(f.Name), table: f.TableOID, attnum: int16(f.TableAttributeNumber), typ: f.DataTypeOID,
			typlen: f.DataTypeSize, typmod: f.TypeModifier, format: f.Format}
	}
	return appendRowDesc(nil, fs)
}

// paramValue is one LIMIT/OFFSET parameter: a value or NULL.
type paramValue struct {
	null bool
	v    int64
}

// execExtended prepares sql, binds params (text, or binary in the
// inferred integer type) and result formats chosen from the column count,
// and executes it.
func execExtended(ctx context.Context, conn *pgconn.PgConn, sql string, params []paramValue, binParams bool, formats func(n int) []int16) (*result, error) {
	sd, err := conn.Prepare(ctx, "", sql, nil)
	if err != nil {
		return nil, err
	}
	vals, pf, err := encodeParams(params, sd.ParamOIDs, binParams)
	if err != nil {
		return nil, err
	}
	res := &result{stmtDesc: rowDescOf(sd.Fields), paramOIDs: sd.ParamOIDs}
	rr := conn.ExecPrepared(ctx, "", vals, pf, formats(len(sd.Fields)))
	for rr.NextRow() {
		res.rows = append(res.rows, appendDataRow(nil, rr.Values()))
	}
	res.rowDesc = rowDescOf(rr.FieldDescriptions())
	if _, err := rr.Close(); err != nil {
		return nil, err
	}
	return res, nil
}

func encodeParams(params []paramValue, oids []uint32, bin bool) ([][]byte, []int16, error) {
	if len(params) != len(oids) {
		return nil, nil, fmt.Errorf("%d parameters for %d placeholders", len(params), len(oids))
	}
	vals := make([][]byte, len(params))
	for i, p := range params {
		switch {
		case p.null:
		case !bin:
			vals[i] = []byte(strconv.FormatInt(p.v, 10))
		case oids[i] == oidInt2:
			vals[i] = binary.BigEndian.AppendUint16(nil, uint16(p.v))
		case oids[i] == oidInt4:
			vals[i] = binary.BigEndian.AppendUint32(nil, uint32(p.v))
		case oids[i] == oidInt8:
			vals[i] = binary.BigEndian.AppendUint64(nil, uint64(p.v))
		default:
			return nil, nil, fmt.Errorf("parameter $%d has type %d", i+1, oids[i])
		}
	}
	if bin {
		return vals, []int16{1}, nil
	}
	return vals, nil, nil
}

// execSimple runs sql with the simple Query protocol (text results).
func execSimple(ctx context.Context, conn *pgconn.PgConn, sql string) (*result, error) {
	mrr := conn.Exec(ctx, sql)
	defer mrr.Close()
	if !mrr.NextResult() {
		return nil, fmt.Errorf("no result: %w", mrr.Close())
	}
	rr := mrr.ResultReader()
	out := &result{rowDesc: rowDescOf(rr.FieldDescriptions())}
	out.stmtDesc = out.rowDesc
	for rr.NextRow() {
		out.rows = append(out.rows, appendDataRow(nil, rr.Values()))
	}
	if _, err := rr.Close(); err != nil {
		return nil, err
	}
	if mrr.NextResult() {
		return nil, errors.New("more than one result")
	}
	return out, mrr.Close()
}

// scratchSource serves rows through one reused buffer, overwritten on each
// call, so that a merge keeping a body past the next call is caught; it
// counts the rows pulled.
type scratchSource struct {
	rows   [][]byte
	buf    []byte
	pulled int
}

func (s *scratchSource) Next() ([]byte, bool, error) {
	for i := range s.buf {
		s.buf[i] = 0xEE
	}
	if s.pulled >= len(s.rows) {
		return nil, false, nil
	}
	s.buf = append(s.buf[:0], s.rows[s.pulled]...)
	s.pulled++
	return s.buf, true, nil
}

// check says how a query's merged rows must match the whole database's.
type check uint8

const (
	checkExact    check = iota // same rows in the same order
	checkKeys                  // same values of the key columns in order; same multiset unless limited
	checkMultiset              // same rows in any order
	checkCount                 // same number of rows (LIMIT without a total order)
	// checkEqual: same rows in the same order, each value equal as
	// PostgreSQL compares its type. DISTINCT keeps any one of several rows
	// that are equal but print differently (1.5 and 1.50, 1 mon and 30
	// days), so which one's text comes back is not defined. The type
	// comparisons themselves are checked against PostgreSQL in
	// testComparisons.
	checkEqual
)

// genQuery is one generated statement.
type genQuery struct {
	sql     string
	params  []paramValue
	check   check
	keyCols []int // checkKeys: output positions of the sort keys
	limited bool
}

// TestAgainstPostgres starts one cluster and runs the checks against
// real PostgreSQL as subtests.
func TestAgainstPostgres(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := testSeed(); s != 0 {
		seed = s
	}
	t.Logf("seed %d (rerun with MERGE_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6d65726765))
	nrows, nqueries := 400, 700
	if testing.Short() {
		nrows, nqueries = 150, 150
	}
	env := startPG(t, rng, nrows)
	t.Run("ComparisonsAgreeWithPostgres", func(t *testing.T) { testComparisons(t, env) })
	t.Run("RefusedStatementsRunOnOneDatabase", func(t *testing.T) { testRefusals(t, env) })
	t.Run("MergeMatchesOneDatabase", func(t *testing.T) { testMerge(t, env, rng, seed, nqueries) })
}

// testMerge is the property test: for random queries over random rows,
// merging the shards' answers to ShardSQL gives exactly the whole
// database's answer to the client's query.
func testMerge(t *testing.T, env *pgEnv, rng *rand.Rand, seed uint64, nqueries int) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	stats := map[string]int{}
	for i := 0; i < nqueries; i++ {
		q := genQueryFor(rng)
		plan, err := Analyze(q.sql)
		if err != nil {
			t.Fatalf("seed %d query %d: Analyze(%s): %v", seed, i, q.sql, err)
		}
		kind := "concatenate"
		if plan != nil {
			kind = strings.Join(plan.Kinds(), "+")
		}
		stats[kind]++
		for _, set := range shardSets {
			mode := rng.IntN(4)
			if err := runOne(ctx, env, plan, q, set.dbs, mode, rng); err != nil {
				shard := q.sql
				if plan != nil {
					shard = plan.ShardSQL()
				}
				t.Fatalf("seed %d query %d on %s (format mode %d):\n  client: %s\n  shards: %s\n  params: %v\n%v",
					seed, i, set.name, mode, q.sql, shard, q.params, err)
			}
		}
	}
	t.Logf("%d queries on 2 shard sets in %v, by merge kind: %v", nqueries, time.Since(start).Round(time.Millisecond), stats)
}

// testSeed reads MERGE_SEED from the test's environment for reruns.
func testSeed() uint64 {
	s, _ := strconv.ParseUint(strings.TrimSpace(os.Getenv("MERGE_SEED")), 10, 64)
	return s
}

// runOne runs q on the whole database and on the shards dbs and compares.
// mode picks the protocol and formats: 0 simple Query (when there are no
// parameters), 1 all text, 2 all binary, 3 per column at random.
func runOne(ctx context.Context, env *pgEnv, plan *Plan, q genQuery, dbs []string, mode int, rng *rand.Rand) error {
	if mode == 0 && len(q.params) > 0 {
		mode = 1
	}
	binParams := rng.IntN(2) == 0
	colSeed := rng.Uint64()
	clientFormats := func(n int) []int16 {
		switch mode {
		case 2:
			return []int16{1}
		case 3:
			r := rand.New(rand.NewPCG(colSeed, 1))
			f := make([]int16, n)
			for i := range f {
				f[i] = int16(r.IntN(2))
			}
			return f
		}
		return nil
	}
	var want *result
	var err error
	if mode == 0 {
		want, err = execSimple(ctx, env.conns["whole"], q.sql)
	} else {
		want, err = execExtended(ctx, env.conns["whole"], q.sql, q.params, binParams, clientFormats)
	}
	if err != nil {
		return fmt.Errorf("whole database: %w", err)
	}
	wantFields, _ := parseRowDesc(want.rowDesc)
	cf := clientFormats(len(wantFields))

	shardSQL := q.sql
	if plan != nil {
		shardSQL = plan.ShardSQL()
	}
	var shards []*result
	for _, db := range dbs {
		var r *result
		if mode == 0 {
			r, err = execSimple(ctx, env.conns[db], shardSQL)
		} else {
			r, err = execExtended(ctx, env.conns[db], shardSQL, q.params, binParams, func(n int) []int16 {
				if plan == nil {
					return cf
				}
				return plan.ShardResultFormats(cf, n)
			})
		}
		if err != nil {
			return fmt.Errorf("shard %s: %w", db, err)
		}
		if mode != 0 && !slices.Equal(r.paramOIDs, want.paramOIDs) {
			return fmt.Errorf("shard %s infers parameter types %v, the client's text %v", db, r.paramOIDs, want.paramOIDs)
		}
		shards = append(shards, r)
	}

	var got [][]byte
	sources := make([]Source, len(shards))
	scratch := make([]*scratchSource, len(shards))
	for i, r := range shards {
		scratch[i] = &scratchSource{rows: r.rows}
		sources[i] = scratch[i]
	}
	gotDesc := shards[0].rowDesc
	if plan == nil {
		for _, s := range scratch {
			for _, r := range s.rows {
				got = append(got, r)
			}
		}
	} else {
		if gotDesc, err = plan.Describe(shards[0].rowDesc); err != nil {
			return fmt.Errorf("Describe: %w", err)
		}
		stmtDesc, err := plan.Describe(shards[0].stmtDesc)
		if err != nil {
			return fmt.Errorf("Describe statement: %w", err)
		}
		if err := sameDesc(env, stmtDesc, want.stmtDesc); err != nil {
			return fmt.Errorf("statement description: %w", err)
		}
		var params [][]byte
		var pf []int16
		if mode != 0 {
			if params, pf, err = encodeParams(q.params, want.paramOIDs, binParams); err != nil {
				return err
			}
		}
		n, err := plan.Run(params, pf, shards[0].rowDesc, cf, sources, func(row []byte) error {
			got = append(got, slices.Clone(row))
			return nil
		}, env.options())
		if err != nil {
			return fmt.Errorf("Run: %w", err)
		}
		if int(n) != len(got) {
			return fmt.Errorf("Run returned %d but emitted %d rows", n, len(got))
		}
		if err := checkLazy(plan, q, scratch, n); err != nil {
			return err
		}
	}
	if err := sameDesc(env, gotDesc, want.rowDesc); err != nil {
		return fmt.Errorf("row description: %w", err)
	}
	opt := env.options()
	return compareRows(q, wantFields, &opt, got, want.rows)
}

// checkLazy verifies that a streamed ORDER BY ... LIMIT pulled no more
// rows than it needed: at most one row per shard beyond those emitted and
// skipped.
func checkLazy(plan *Plan, q genQuery, sources []*scratchSource, emitted int64) error {
	if plan.agg || plan.distinct || len(plan.distinctOn) > 0 || plan.withTies || !plan.limit.set || len(plan.order) == 0 {
		return nil
	}
	pulled := 0
	for _, s := range sources {
		pulled += s.pulled
	}
	offset := int64(0)
	if plan.offset.set {
		if plan.offset.param < 0 {
			offset = plan.offset.val
		} else if p := q.params[plan.offset.param]; !p.null {
			offset = p.v
		}
	}
	if int64(pulled) > emitted+offset+int64(len(sources)) {
		return fmt.Errorf("the merge pulled %d rows to emit %d after skipping %d from %d shards", pulled, emitted, offset, len(sources))
	}
	return nil
}

// sameDesc compares RowDescriptions, ignoring table OIDs (per database)
// and enum type OIDs (per database).
func sameDesc(env *pgEnv, got, want []byte) error {
	g, err := parseRowDesc(got)
	if err != nil {
		return err
	}
	w, err := parseRowDesc(want)
	if err != nil {
		return err
	}
	norm := func(fs []field) []string {
		var out []string
		for _, f := range fs {
			typ := strconv.Itoa(int(f.typ))
			if _, ok := env.enums[f.typ]; ok {
				typ = "enum"
			}
			out = append(out, fmt.Sprintf("%s/%d/%s/%d/%d/%d", f.name, f.attnum, typ, f.typlen, f.typmod, f.format))
		}
		return out
	}
	if a, b := norm(g), norm(w); !slices.Equal(a, b) {
		return fmt.Errorf("got %v, want %v", a, b)
	}
	return nil
}

func compareRows(q genQuery, fields []field, opt *Options, got, want [][]byte) error {
	// show prints up to 12 rows around row at, the first that differs.
	show := func(rows [][]byte, at int) string {
		var b strings.Builder
		from := max(0, min(at-3, len(rows)-12))
		if from > 0 {
			fmt.Fprintf(&b, "\n    ... %d rows before", from)
		}
		for i := from; i < len(rows) && i < from+12; i++ {
			cols, _ := splitRow(rows[i], int(binary.BigEndian.Uint16(rows[i])), nil)
			fmt.Fprintf(&b, "\n    %d: %q", i+1, cols)
		}
		if n := len(rows) - from - 12; n > 0 {
			fmt.Fprintf(&b, "\n    ... %d rows after", n)
		}
		return b.String()
	}
	at := 0
	fail := func(what string) error {
		return fmt.Errorf("%s\n  got:%s\n  want:%s", what, show(got, at), show(want, at))
	}
	if len(got) != len(want) {
		return fail(fmt.Sprintf("got %d rows, want %d", len(got), len(want)))
	}
	switch q.check {
	case checkExact:
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				at = i
				return fail(fmt.Sprintf("row %d differs", i+1))
			}
		}
	case checkEqual:
		for i := range got {
			if !equalRows(fields, opt, got[i], want[i]) {
				at = i
				return fail(fmt.Sprintf("row %d differs", i+1))
			}
		}
	case checkKeys:
		for i := range got {
			g, _ := splitRow(got[i], int(binary.BigEndian.Uint16(got[i])), nil)
			w, _ := splitRow(want[i], int(binary.BigEndian.Uint16(want[i])), nil)
			for _, k := range q.keyCols {
				if !bytes.Equal(g[k], w[k]) {
					at = i
					return fail(fmt.Sprintf("row %d key column %d differs", i+1, k+1))
				}
			}
		}
		if !q.limited && !sameMultiset(got, want) {
			return fail("different rows")
		}
	case checkMultiset:
		if !sameMultiset(got, want) {
			return fail("different rows")
		}
	}
	return nil
}

// equalRows reports whether two DataRows hold equal values column by
// column, as PostgreSQL's DISTINCT compares them.
func equalRows(fields []field, opt *Options, a, b []byte) bool {
	x, errX := splitRow(a, len(fields), nil)
	y, errY := splitRow(b, len(fields), nil)
	if errX != nil || errY != nil {
		return false
	}
	for i, f := range fields {
		if bytes.Equal(x[i], y[i]) {
			continue
		}
		if x[i] == nil || y[i] == nil {
			return false
		}
		c, err := newColType(f.typ, f.format, opt, "compare")
		if err != nil {
			return false
		}
		vx, errX := c.decode(x[i])
		vy, errY := c.decode(y[i])
		if errX != nil || errY != nil || c.compare(&vx, &vy) != 0 {
			return false
		}
	}
	return true
}

// TestEqualRowsComparesValuesNotText checks the checkEqual oracle: rows
// that print differently but hold equal values match, and nothing else
// does.
func TestEqualRowsComparesValuesNotText(t *testing.T) {
	fields := []field{{typ: oidNumeric}, {typ: oidInterval}, {typ: oidText}}
	row := func(vals ...string) []byte { return newSource(vals).rows[0] }
	base := row("1.5", "1 mon", "x")
	for _, c := range []struct {
		other []string
		equal bool
	}{
		{[]string{"1.5", "1 mon", "x"}, true},
		{[]string{"1.50000000000000000000", "30 days", "x"}, true},
		{[]string{"1.6", "1 mon", "x"}, false},
		{[]string{"1.5", "31 days", "x"}, false},
		{[]string{"1.5", "1 mon", "X"}, false},
		{[]string{"NULL", "1 mon", "x"}, false},
		{[]string{"1.5", "1 mon", ""}, false},
	} {
		if got := equalRows(fields, nil, base, row(c.other...)); got != c.equal {
			t.Errorf("equalRows(1.5 | 1 mon | x, %q) = %v, want %v", c.other, got, c.equal)
		}
	}
}

func sameMultiset(a, b [][]byte) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.SortFunc(x, bytes.Compare)
	slices.SortFunc(y, bytes.Compare)
	return slices.EqualFunc(x, y, bytes.Equal)
}

// Columns of items for the generator.
type genCol struct {
	name   string
	minmax bool // has min and max
	sum    bool // exact sum and avg
	group  bool
}

var genCols = []genCol{
	{"id", true, true, false}, {"team", true, true, true}, {"u", false, false, true}, {"t", true, false, true},
	{"v", true, false, true}, {"p", true, false, true}, {"i4", true, true, true}, {"i8", true, true, true},
	{"n", true, true, true}, {"b", false, false, true}, {"ts", true, false, true}, {"j", false, false, true},
	{"d", true, false, true}, {"f", true, false, true}, {"iv", true, true, true}, {"c", true, false, true},
}

// genExprs are computed columns with their aliases.
var genExprs = [][2]string{
	{"i4 % 3", "m3"}, {"lower(t)", "lt"}, {"i8 / 3", "i8d"}, {"n * 2", "n2"}, {"j -> 'a'", "ja"},
	{"length(v)", "lv"}, {"ts::date", "tsd"}, {"iv * 2", "iv2"}, {"coalesce(t, v)", "tv"},
}

var genWheres = []string{"", "", "", " WHERE team = 1", " WHERE i4 > 0", " WHERE b", " WHERE team IN (2, 3)",
	" WHERE id % 5 = 0", " WHERE t IS NOT NULL", " WHERE false"}

// item is a select-list entry: its SQL and the name it can be ordered by.
type item struct {
	sql, ref string
}

func pickN[T any](rng *rand.Rand, from []T, n int) []T {
	idx := rng.Perm(len(from))
	out := make([]T, 0, n)
	for _, i := range idx[:min(n, len(from))] {
		out = append(out, from[i])
	}
	return out
}

func sortDir(rng *rand.Rand) string {
	return []string{"", " ASC", " DESC", " NULLS FIRST", " NULLS LAST", " DESC NULLS LAST", " ASC NULLS FIRST", " DESC NULLS FIRST"}[rng.IntN(8)]
}

// limitClause returns a random LIMIT/OFFSET clause, its parameters, and
// whether it limits the rows (anything but none, LIMIT ALL and OFFSET 0).
func limitClause(rng *rand.Rand, ordered bool) (string, []paramValue, bool) {
	k := int64(rng.IntN(12))
	o := int64(rng.IntN(8))
	switch rng.IntN(14) {
	case 0, 1, 2:
		return "", nil, false
	case 3:
		return fmt.Sprintf(" LIMIT %d", k), nil, true
	case 4:
		return fmt.Sprintf(" LIMIT %d OFFSET %d", k, o), nil, true
	case 5:
		return fmt.Sprintf(" OFFSET %d", o), nil, o > 0
	case 6:
		return " LIMIT $1", []paramValue{{v: k}}, true
	case 7:
		return " LIMIT $1 OFFSET $2", []paramValue{{v: k}, {v: o}}, true
	case 8:
		return " LIMIT $1::integer OFFSET $2::smallint", []paramValue{{v: k}, {v: o}}, true
	case 9:
		return " OFFSET $1", []paramValue{{v: o}}, true
	case 10:
		return " LIMIT ALL", nil, false
	case 11:
		return " LIMIT $1 OFFSET $2", []paramValue{{null: true}, {v: o}}, true
	case 12:
		if ordered {
			return fmt.Sprintf(" OFFSET %d ROWS FETCH FIRST %d ROWS WITH TIES", o, k), nil, true
		}
		return fmt.Sprintf(" FETCH FIRST %d ROWS ONLY", k), nil, true
	default:
		if ordered {
			return " OFFSET $2 ROWS FETCH FIRST $1 ROWS WITH TIES", []paramValue{{v: k}, {v: o}}, true
		}
		return fmt.Sprintf(" OFFSET %d ROWS FETCH NEXT %d ROWS ONLY", o, k), nil, true
	}
}

func genQueryFor(rng *rand.Rand) genQuery {
	switch rng.IntN(10) {
	case 0, 1, 2, 3:
		return genOrder(rng)
	case 4, 5, 6:
		return genAggregate(rng)
	case 7:
		return genDistinct(rng)
	case 8:
		return genDistinctOn(rng)
	default:
		return genUnion(rng)
	}
}

// genOrder: plain rows with ORDER BY (on output columns, positions,
// aliases, expressions or hidden columns) and LIMIT/OFFSET.
func genOrder(rng *rand.Rand) genQuery {
	var items []item
	star := rng.IntN(5) == 0
	if star {
		items = append(items, item{sql: "*"})
	}
	for _, c := range pickN(rng, genCols, 1+rng.IntN(4)) {
		items = append(items, item{sql: c.name, ref: c.name})
	}
	if rng.IntN(2) == 0 {
		e := genExprs[rng.IntN(len(genExprs))]
		items = append(items, item{sql: e[0] + " AS " + e[1], ref: e[1]})
	}
	rng.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
	var sel []string
	for _, it := range items {
		sel = append(sel, it.sql)
	}
	total := rng.IntN(5) != 0
	var keys []string
	var keyCols []int
	for range 1 + rng.IntN(3) {
		dir := sortDir(rng)
		i := rng.IntN(len(items))
		if items[i].ref != "" && !total || rng.IntN(3) == 0 && items[i].ref != "" {
			// An output column, by position or name.
			if star {
				// Positions after a * are not known to the generator.
				keys = append(keys, items[i].ref+dir)
			} else if rng.IntN(2) == 0 {
				keys = append(keys, strconv.Itoa(i+1)+dir)
			} else {
				keys = append(keys, items[i].ref+dir)
			}
			if !star {
				keyCols = append(keyCols, i)
			}
			continue
		}
		if !total {
			continue
		}
		// A column or expression that may not be an output column.
		if rng.IntN(2) == 0 {
			keys = append(keys, genCols[rng.IntN(len(genCols))].name+dir)
		} else {
			keys = append(keys, genExprs[rng.IntN(len(genExprs))][0]+dir)
		}
	}
	q := genQuery{check: checkExact}
	if total {
		keys = append(keys, "id"+sortDir(rng))
	} else {
		q.check, q.keyCols = checkKeys, keyCols
		if len(keys) == 0 || star {
			q.check = checkMultiset
		}
	}
	lim, params, limited := limitClause(rng, len(keys) > 0)
	q.limited = limited
	if q.check == checkMultiset && limited {
		q.check = checkCount
	}
	q.sql = "SELECT " + strings.Join(sel, ", ") + " FROM items" + genWheres[rng.IntN(len(genWheres))] +
		" ORDER BY " + strings.Join(keys, ", ") + lim
	if len(keys) == 0 {
		q.sql = "SELECT " + strings.Join(sel, ", ") + " FROM items" + genWheres[rng.IntN(len(genWheres))] + lim
		q.check = checkMultiset
		if limited {
			q.check = checkCount
		}
	}
	q.params = params
	return q
}

// genAggregate: aggregates with or without GROUP BY, ordered by grouping
// columns and aggregates (selected or hidden), with LIMIT/OFFSET.
func genAggregate(rng *rand.Rand) genQuery {
	var groups []item // grouping expressions
	for range rng.IntN(3) {
		if rng.IntN(4) == 0 {
			e := genExprs[rng.IntN(len(genExprs))]
			groups = append(groups, item{sql: e[0], ref: e[1]})
			continue
		}
		var c genCol
		for c = genCols[rng.IntN(len(genCols))]; !c.group; c = genCols[rng.IntN(len(genCols))] {
		}
		groups = append(groups, item{sql: c.name, ref: c.name})
	}
	groups = slices.CompactFunc(groups, func(a, b item) bool { return a.sql == b.sql })
	// The select list: some grouping expressions and the aggregates, in
	// random order; GROUP BY names each grouping expression or, when it is
	// selected, sometimes its position.
	type entry struct {
		sql   string
		group int // index in groups, or -1
	}
	var entries []entry
	for i, g := range groups {
		if rng.IntN(4) != 0 {
			if g.sql != g.ref {
				entries = append(entries, entry{g.sql + " AS " + g.ref, i})
			} else {
				entries = append(entries, entry{g.sql, i})
			}
		}
	}
	aggs := genAggs(rng, 1+rng.IntN(4))
	for i, a := range aggs {
		if rng.IntN(3) == 0 {
			entries = append(entries, entry{fmt.Sprintf("%s AS a%d", a, i), -1})
		} else {
			entries = append(entries, entry{a, -1})
		}
	}
	rng.Shuffle(len(entries), func(i, j int) { entries[i], entries[j] = entries[j], entries[i] })
	var sel []string
	for _, e := range entries {
		sel = append(sel, e.sql)
	}
	var groupBy []string
	for i, g := range groups {
		pos := slices.IndexFunc(entries, func(e entry) bool { return e.group == i })
		switch {
		case pos >= 0 && rng.IntN(3) == 0:
			groupBy = append(groupBy, strconv.Itoa(pos+1))
		case pos >= 0 && g.sql != g.ref && rng.IntN(2) == 0:
			groupBy = append(groupBy, g.ref) // the output alias
		default:
			groupBy = append(groupBy, g.sql)
		}
	}
	q := genQuery{check: checkExact}
	var keys []string
	if len(groups) > 0 {
		if rng.IntN(2) == 0 {
			keys = append(keys, genAggs(rng, 1)[0]+sortDir(rng))
		}
		for _, g := range groups {
			keys = append(keys, g.sql+sortDir(rng))
		}
		if rng.IntN(6) == 0 {
			keys = nil
			q.check = checkMultiset
		}
	}
	distinct := ""
	if rng.IntN(8) == 0 {
		// DISTINCT over groups: order by every output column to be total.
		distinct = "DISTINCT "
		keys = nil
		for i := range sel {
			keys = append(keys, strconv.Itoa(i+1)+sortDir(rng))
		}
		q.check = checkEqual
	}
	lim, params, limited := limitClause(rng, len(keys) > 0)
	q.limited, q.params = limited, params
	if q.check == checkMultiset && limited {
		q.check = checkCount
	}
	q.sql = "SELECT " + distinct + strings.Join(sel, ", ") + " FROM items" + genWheres[rng.IntN(len(genWheres))]
	if len(groupBy) > 0 {
		q.sql += " GROUP BY " + strings.Join(groupBy, ", ")
	}
	if len(keys) > 0 {
		q.sql += " ORDER BY " + strings.Join(keys, ", ")
	}
	q.sql += lim
	return q
}

func genAggs(rng *rand.Rand, n int) []string {
	var out []string
	for range n {
		var c genCol
		switch rng.IntN(12) {
		case 0:
			out = append(out, "count(*)")
		case 1:
			out = append(out, "count("+genCols[rng.IntN(len(genCols))].name+")")
		case 2, 3:
			for c = genCols[rng.IntN(len(genCols))]; !c.sum; c = genCols[rng.IntN(len(genCols))] {
			}
			out = append(out, "sum("+c.name+")")
		case 4, 5:
			for c = genCols[rng.IntN(len(genCols))]; !c.sum; c = genCols[rng.IntN(len(genCols))] {
			}
			out = append(out, "avg("+c.name+")")
		case 6, 7:
			for c = genCols[rng.IntN(len(genCols))]; !c.minmax; c = genCols[rng.IntN(len(genCols))] {
			}
			out = append(out, []string{"min", "max"}[rng.IntN(2)]+"("+c.name+")")
		case 8:
			out = append(out, []string{"bool_and", "bool_or", "every"}[rng.IntN(3)]+"(b)")
		case 9:
			out = append(out, "count(*) FILTER (WHERE b)")
		case 10:
			out = append(out, "sum(i4) FILTER (WHERE i4 > 0)")
		default:
			out = append(out, []string{"avg(i4 + 0.5)", "sum(n * 3)", "max(lower(t))", "avg((i4 % 100)::int2)", "sum((i4 % 1000)::int2)"}[rng.IntN(5)])
		}
	}
	return out
}

// genDistinct: SELECT DISTINCT, ordered by every output column or not at
// all.
func genDistinct(rng *rand.Rand) genQuery {
	cols := pickN(rng, genCols[1:], 1+rng.IntN(3))
	var sel, keys []string
	for i, c := range cols {
		sel = append(sel, c.name)
		if rng.IntN(2) == 0 {
			keys = append(keys, c.name+sortDir(rng))
		} else {
			keys = append(keys, strconv.Itoa(i+1)+sortDir(rng))
		}
	}
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	q := genQuery{check: checkExact}
	order := " ORDER BY " + strings.Join(keys, ", ")
	if rng.IntN(4) == 0 {
		order = ""
		q.check = checkMultiset
	}
	lim, params, limited := limitClause(rng, order != "")
	q.limited, q.params = limited, params
	if q.check == checkMultiset && limited {
		q.check = checkCount
	}
	q.sql = "SELECT DISTINCT " + strings.Join(sel, ", ") + " FROM items" + genWheres[rng.IntN(len(genWheres))] + order + lim
	return q
}

// genDistinctOn: DISTINCT ON with a total order inside each group.
func genDistinctOn(rng *rand.Rand) genQuery {
	var c genCol
	for c = genCols[rng.IntN(len(genCols))]; !c.group; c = genCols[rng.IntN(len(genCols))] {
	}
	others := pickN(rng, genCols, 1+rng.IntN(3))
	var sel []string
	for _, o := range others {
		sel = append(sel, o.name)
	}
	if rng.IntN(2) == 0 {
		sel = append(sel, c.name)
	}
	rng.Shuffle(len(sel), func(i, j int) { sel[i], sel[j] = sel[j], sel[i] })
	q := genQuery{check: checkExact}
	order := " ORDER BY " + c.name + sortDir(rng) + ", id" + sortDir(rng)
	if rng.IntN(4) == 0 {
		// Without ORDER BY the row kept per group is not determined.
		order = ""
		q.check = checkCount
		sel = []string{c.name}
	}
	lim, params, limited := limitClause(rng, order != "")
	q.limited, q.params = limited, params
	if q.check == checkCount && !limited {
		q.check = checkMultiset
	}
	q.sql = "SELECT DISTINCT ON (" + c.name + ") " + strings.Join(sel, ", ") + " FROM items" +
		genWheres[rng.IntN(len(genWheres))] + order + lim
	return q
}

// genUnion: UNION and UNION ALL of two arms over one column.
func genUnion(rng *rand.Rand) genQuery {
	c := []string{"t", "v", "i4", "p::text", "d"}[rng.IntN(5)]
	c2 := c
	if c == "t" || c == "v" {
		c2 = []string{"t", "v"}[rng.IntN(2)]
	}
	op := []string{" UNION ", " UNION ALL "}[rng.IntN(2)]
	q := genQuery{check: checkExact}
	order := " ORDER BY 1" + sortDir(rng)
	if rng.IntN(3) == 0 {
		order = ""
		q.check = checkMultiset
	}
	lim, params, limited := limitClause(rng, order != "")
	q.limited, q.params = limited, params
	if q.check == checkMultiset && limited {
		q.check = checkCount
	}
	q.sql = "SELECT " + c + " AS x FROM items" + genWheres[rng.IntN(len(genWheres))] + op +
		"SELECT " + c2 + " FROM items" + genWheres[rng.IntN(len(genWheres))] + order + lim
	return q
}

// testRefusals checks that what Analyze refuses with 0A000 is valid SQL
// that one database runs: the refusal is about merging, not about the
// statement.
func testRefusals(t *testing.T, env *pgEnv) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, tc := range refusals {
		t.Run(tc.sql, func(t *testing.T) {
			_, err := Analyze(tc.sql)
			var pe *pgerr.Error
			if !errors.As(err, &pe) || pe.Code != pgerr.FeatureNotSupported {
				t.Fatalf("Analyze = %v, want 0A000", err)
			}
			if _, err := execSimple(ctx, env.conns["whole"], tc.sql); err != nil {
				t.Fatalf("one database rejects it too: %v", err)
			}
		})
	}
}

// testComparisons sorts value lists of every supported type with
// PostgreSQL (in text and binary) and checks that the merge's comparison
// orders them the same way, ties included.
func testComparisons(t *testing.T, env *pgEnv) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn := env.conns["whole"]
	for _, tc := range comparisonCases {
		for _, format := range []int16{0, 1} {
			t.Run(fmt.Sprintf("%s/format=%d", tc.typ, format), func(t *testing.T) {
				// Each value with the dense rank PostgreSQL gives it.
				sql := fmt.Sprintf("SELECT v, dense_rank() OVER (ORDER BY v) FROM unnest(ARRAY[%s]::%s[]) AS v ORDER BY v",
					strings.Join(tc.values, ", "), tc.typ)
				res, err := execExtended(ctx, conn, sql, nil, false, func(int) []int16 { return []int16{format, 0} })
				if err != nil {
					t.Fatal(err)
				}
				fs, _ := parseRowDesc(res.rowDesc)
				ct, err := newColType(fs[0].typ, format, &Options{EnumOrder: env.options().EnumOrder}, "sort")
				if err != nil {
					t.Fatal(err)
				}
				var prev value
				var prevRank []byte
				for i, row := range res.rows {
					cols, _ := splitRow(row, 2, nil)
					v, err := ct.decode(cols[0])
					if err != nil {
						t.Fatalf("decode %q: %v", cols[0], err)
					}
					if i > 0 {
						want := 0
						if !bytes.Equal(prevRank, cols[1]) {
							want = -1
						}
						if got := ct.compare(&prev, &v); got != want {
							t.Errorf("compare(row %d, row %d) = %d, want %d (PostgreSQL ranks %s and %s)", i, i+1, got, want, prevRank, cols[1])
						}
						if got := ct.compare(&v, &prev); got != -want {
							t.Errorf("compare(row %d, row %d) = %d, want %d", i+1, i, got, -want)
						}
					}
					prev, prevRank = v, cols[1]
				}
			})
		}
	}
}

// comparisonCases are values of each type, in no particular order.
var comparisonCases = []struct {
	typ    string
	values []string
}{
	{"int2", []string{"0", "-1", "1", "32767", "-32768", "5", "5"}},
	{"int4", []string{"0", "-1", "1", "2147483647", "-2147483648", "10", "9"}},
	{"int8", []string{"0", "-1", "9223372036854775807", "-9223372036854775808", "100", "99"}},
	{"oid", []string{"0", "1", "4294967295", "2147483648", "2147483647"}},
	{"numeric", []string{"0", "0.0", "-0.00", "1.5", "1.50", "-1.5", "'NaN'", "'Infinity'", "'-Infinity'", "1e20", "0.000001",
		"123456789012345678901234567890.123456789", "-123456789012345678901234567890.123456789", "9999.9999", "10000", "0.1", "0.09"}},
	{"float4", []string{"0", "-0", "1.5", "'NaN'", "'Infinity'", "'-Infinity'", "1e-30", "-1e30", "3.4e38", "1.17549435e-38"}},
	{"float8", []string{"0", "-0", "1.5", "'NaN'", "'NaN'", "'Infinity'", "'-Infinity'", "1e-300", "-1e300", "5e-324", "0.1", "0.30000000000000004"}},
	{"bool", []string{"true", "false", "false"}},
	{"text", []string{"''", "'a'", "'A'", "'a '", "'ab'", "'b'", "'é'", "'e'", "'日本'", "'\\'", "'~'", "'a'"}},
	{"varchar", []string{"''", "'z'", "'Z'", "'zz'"}},
	{"name", []string{"'a'", "'b'", "'ab'", "''"}},
	{"bpchar", []string{"'a'", "'a '", "'a  '", "'ab'", "''", "' '", "'b'"}},
	{"char(3)", []string{"'a'", "'ab'", "'abc'", "''"}},
	{"bytea", []string{`'\x'`, `'\x00'`, `'\x0001'`, `'\xff'`, `'\x7f'`, `'\x80'`}},
	{"uuid", []string{"'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
		"'80000000-0000-0000-0000-000000000000'", "'7fffffff-ffff-ffff-ffff-ffffffffffff'", "'0123456789abcdef0123456789abcdef'"}},
	{"date", []string{"'2024-01-02'", "'2000-01-01'", "'1999-12-31'", "'0001-01-01 BC'", "'4713-11-24 BC'", "'infinity'",
		"'-infinity'", "'5874897-12-31'", "'0001-01-01'", "'1970-01-01'"}},
	{"time", []string{"'00:00'", "'23:59:59.999999'", "'12:00'", "'12:00:00.5'", "'24:00'"}},
	{"timestamp", []string{"'2024-01-02 03:04:05'", "'2024-01-02 03:04:05.000001'", "'infinity'", "'-infinity'",
		"'0044-03-15 12:00:00 BC'", "'294276-12-31 23:59:59.999999'", "'4713-11-24 00:00:00 BC'", "'2000-01-01'"}},
	{"timestamptz", []string{"'2024-01-02 03:04:05+00'", "'2024-01-02 03:04:05+01'", "'2024-01-02 02:04:05+00'",
		"'1880-01-01 12:00:00+00'", "'1880-01-01 12:00:00.25+00'", "'infinity'", "'-infinity'", "'0044-03-15 12:00:00+00 BC'",
		"'2024-06-30 12:00:00+05:30'", "'2024-06-30 06:30:00+00'", "'12345-01-01 00:00:00+00'"}},
	{"interval", []string{"'1 day'", "'24 hours'", "'1 mon'", "'30 days'", "'-1 day'", "'1 year'", "'360 days'", "'00:00:00.000001'",
		"'-00:00:00.000001'", "'0'", "'1 mon -1 day'", "'29 days 23:59:59'", "'178000000 years'", "'-178000000 years'", "'1 day -00:00:01'"}},
	{"jsonb", []string{`'null'`, `'[]'`, `'{}'`, `'true'`, `'false'`, `'0'`, `'1'`, `'1.0'`, `'-1'`, `'""'`, `'"a"'`, `'"b"'`, `'"ab"'`,
		`'[1]'`, `'[2]'`, `'[1, 2]'`, `'[null]'`, `'[[]]'`, `'[{}]'`, `'[1, "a"]'`, `'["a", 1]'`, `'{"a": 1}'`, `'{"b": 0}'`,
		`'{"a": 2}'`, `'{"aa": 0}'`, `'{"a": 1, "b": 1}'`, `'{"a": {"b": 1}}'`, `'{"a": [1]}'`, `'{"a": null}'`, `'[true]'`,
		`'["\u00e9"]'`, `'"\u00e9"'`, `'"e"'`, `'[[1], 2]'`, `'[1, [2]]'`, `'1e3'`, `'1000'`, `'{"a": "x", "b": [1, {"c": true}]}'`}},
	{"prio", []string{"'LOW'", "'MEDIUM'", "'HIGH'", "'URGENT'", "'CRITICAL'", "'LOW'"}},
}

// refusals are statements one database runs that cannot be merged.
var refusals = []struct{ sql string }{
	{"SELECT id, row_number() OVER (ORDER BY id) FROM items"},
	{"SELECT sum(i4) OVER () FROM items"},
	{"SELECT t FROM items INTERSECT SELECT v FROM items"},
	{"SELECT t FROM items EXCEPT SELECT v FROM items"},
	{"SELECT t FROM items UNION ALL (SELECT v FROM items UNION SELECT t FROM items)"},
	{"SELECT team, count(*) FROM items GROUP BY team HAVING count(*) > 1"},
	{"SELECT count(DISTINCT t) FROM items"},
	{"SELECT array_agg(id) FROM items"},
	{"SELECT string_agg(t, ',') FROM items"},
	{"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY i4) FROM items"},
	{"SELECT stddev(i4) FROM items"},
	{"SELECT sum(i4) + 1 FROM items"},
	{"SELECT coalesce(sum(i4), 0) FROM items"},
	{"SELECT team, count(*) FROM items GROUP BY ROLLUP (team)"},
	{"SELECT team, count(*) FROM items GROUP BY CUBE (team, b)"},
	{"SELECT team, count(*) FROM items GROUP BY GROUPING SETS ((team), ())"},
	{"SELECT id FROM items ORDER BY id LIMIT (SELECT 1)"},
	{"SELECT id FROM items ORDER BY id LIMIT 2 + 3"},
	{"SELECT id FROM items ORDER BY id LIMIT 3 FOR UPDATE"},
	{"SELECT id FROM items ORDER BY t COLLATE \"C.utf8\""},
	{"SELECT id FROM items ORDER BY id USING <"},
	{"SELECT team, count(*) FROM items GROUP BY team ORDER BY max(id) - min(id)"},
	{"SELECT * , count(*) OVER () FROM items"},
	{"SELECT i4 % 2 AS i4, count(*) FROM items GROUP BY i4"},
	{"SELECT date_trunc('day', ts) AS ts, count(*) FROM items GROUP BY ts"},
	{"VALUES (1), (2) ORDER BY 1"},
	{"SELECT bit_or(i4) FROM items"},
	{"SELECT (SELECT 1) AS x, count(*) FILTER (WHERE b) * 2 FROM items"},
}
