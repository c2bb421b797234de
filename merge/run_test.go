package merge

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// textSource serves rows given as text values ("" is NULL when null is
// set); it records how many rows were pulled and can fail.
type textSource struct {
	rows   [][]byte
	pulled int
	err    error // returned instead of the row after the last one
}

func newSource(rows ...[]string) *textSource {
	s := &textSource{}
	for _, r := range rows {
		cols := make([][]byte, len(r))
		for i, v := range r {
			if v != "NULL" {
				cols[i] = []byte(v)
			}
		}
		s.rows = append(s.rows, appendDataRow(nil, cols))
	}
	return s
}

func (s *textSource) Next() ([]byte, bool, error) {
	if s.pulled >= len(s.rows) {
		return nil, false, s.err
	}
	s.pulled++
	return s.rows[s.pulled-1], true, nil
}

// desc builds a RowDescription body: one column per type OID, all in
// format.
func desc(format int16, oids ...uint32) []byte {
	fs := make([]field, len(oids))
	for i, o := range oids {
		fs[i] = field{name: []byte{byte('a' + i)}, typ: o, typlen: -1, typmod: -1, format: format}
	}
	return appendRowDesc(nil, fs)
}

// run merges and returns the client's rows as text values.
func run(t *testing.T, p *Plan, params [][]byte, rd []byte, opt Options, srcs ...Source) ([]string, error) {
	t.Helper()
	var out []string
	n, err := p.Run(params, nil, rd, nil, srcs, func(row []byte) error {
		cols, err := splitRow(row, int(row[1]), nil)
		if err != nil {
			t.Fatal(err)
		}
		var vals []string
		for _, c := range cols {
			if c == nil {
				vals = append(vals, "NULL")
			} else {
				vals = append(vals, string(c))
			}
		}
		out = append(out, strings.Join(vals, ","))
		return nil
	}, opt)
	if err == nil && int(n) != len(out) {
		t.Fatalf("Run returned %d, emitted %d", n, len(out))
	}
	return out, err
}

func mustAnalyze(t *testing.T, sql string) *Plan {
	t.Helper()
	p, err := Analyze(sql)
	if err != nil || p == nil {
		t.Fatalf("Analyze(%s) = %v, %v", sql, p, err)
	}
	return p
}

// TestRunMergesSortedShardsLazily checks the k-way merge: NULLS placement,
// ties broken by shard order, and no pulling past the limit.
func TestRunMergesSortedShardsLazily(t *testing.T) {
	p := mustAnalyze(t, "SELECT a, b FROM t ORDER BY a DESC, b LIMIT 4 OFFSET 1")
	// DESC sorts NULLs first; each shard is sorted as its ORDER BY says.
	s1 := newSource([]string{"NULL", "x"}, []string{"9", "a"}, []string{"5", "b"}, []string{"1", "c"})
	s2 := newSource([]string{"9", "a"}, []string{"7", "z"}, []string{"2", "y"})
	s3 := newSource()
	got, err := run(t, p, nil, desc(0, oidInt4, oidText), Options{}, s1, s2, s3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"9,a", "9,a", "7,z", "5,b"}; !slices.Equal(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	if s1.pulled+s2.pulled > 5+3 {
		t.Errorf("pulled %d and %d rows for 5", s1.pulled, s2.pulled)
	}
	if s1.pulled == len(s1.rows) && s2.pulled == len(s2.rows) {
		t.Errorf("every row was pulled")
	}
}

// TestRunDropsHiddenColumns checks that hidden sort columns never reach
// the client.
func TestRunDropsHiddenColumns(t *testing.T) {
	p := mustAnalyze(t, "SELECT a FROM t ORDER BY b")
	got, err := run(t, p, nil, desc(0, oidText, oidInt8), Options{},
		newSource([]string{"x", "1"}, []string{"y", "3"}), newSource([]string{"z", "2"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"x", "z", "y"}; !slices.Equal(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
}

// TestRunCombinesGroups checks GROUP BY merging with NULL groups, avg and
// a scalar aggregate over shards without rows.
func TestRunCombinesGroups(t *testing.T) {
	p := mustAnalyze(t, "SELECT g, count(*), sum(x), avg(x), min(s), max(s), bool_and(b) FROM t GROUP BY g ORDER BY g")
	// Shard columns: g, count, sum(x), avg(x) as its sum, min, max, bool_and, then avg's hidden count(x).
	rd := desc(0, oidText, oidInt8, oidInt8, oidInt8, oidText, oidText, oidBool, oidInt8)
	s1 := newSource([]string{"a", "2", "3", "3", "m", "p", "t", "2"}, []string{"NULL", "1", "NULL", "NULL", "NULL", "NULL", "NULL", "0"})
	s2 := newSource([]string{"NULL", "4", "10", "10", "c", "c", "f", "4"}, []string{"a", "1", "1", "1", "b", "z", "t", "1"})
	got, err := run(t, p, nil, rd, Options{}, s1, s2)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"a,3,4,1.3333333333333333,b,z,t",
		"NULL,5,10,2.5000000000000000,c,c,f",
	}
	if !slices.Equal(got, want) {
		t.Errorf("rows\n%v\nwant\n%v", got, want)
	}

	p = mustAnalyze(t, "SELECT count(*), sum(x), avg(x) FROM t")
	got, err = run(t, p, nil, desc(0, oidInt8, oidInt8, oidInt8, oidInt8), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"0,NULL,NULL"}; !slices.Equal(got, want) {
		t.Errorf("scalar aggregate over no shard rows = %v, want %v", got, want)
	}
}

// TestRunLimitParameters checks LIMIT and OFFSET given as Bind
// parameters, including NULL and the server's negative-value errors.
func TestRunLimitParameters(t *testing.T) {
	p := mustAnalyze(t, "SELECT a FROM t ORDER BY a LIMIT $1 OFFSET $2")
	src := func() []Source {
		return []Source{newSource([]string{"1"}, []string{"3"}), newSource([]string{"2"}, []string{"4"})}
	}
	rd := desc(0, oidInt4)
	tests := []struct {
		params  [][]byte
		formats []int16
		want    []string
		code    pgerr.Code
	}{
		{[][]byte{[]byte("2"), []byte("1")}, nil, []string{"2", "3"}, ""},
		{[][]byte{nil, []byte("1")}, nil, []string{"2", "3", "4"}, ""},
		{[][]byte{[]byte("1"), nil}, nil, []string{"1"}, ""},
		{[][]byte{{0, 0, 0, 0, 0, 0, 0, 3}, {0, 2}}, []int16{1}, []string{"3", "4"}, ""},
		{[][]byte{{0, 0, 0, 1}, {0, 0, 0, 0, 0, 0, 0, 0}}, []int16{1}, []string{"1"}, ""},
		{[][]byte{[]byte("-1"), []byte("0")}, nil, nil, "2201W"},
		{[][]byte{[]byte("1"), []byte("-1")}, nil, nil, "2201X"},
		{[][]byte{[]byte("x"), []byte("0")}, nil, nil, pgerr.FeatureNotSupported},
		{[][]byte{[]byte("1")}, nil, nil, pgerr.ProtocolViolation},
	}
	for _, tc := range tests {
		var got []string
		_, err := p.Run(tc.params, tc.formats, rd, nil, src(), func(row []byte) error {
			cols, _ := splitRow(row, 1, nil)
			got = append(got, string(cols[0]))
			return nil
		}, Options{})
		var pe *pgerr.Error
		switch {
		case tc.code != "" && (!errors.As(err, &pe) || pe.Code != tc.code):
			t.Errorf("params %q: error %v, want %s", tc.params, err, tc.code)
		case tc.code == "" && err != nil:
			t.Errorf("params %q: %v", tc.params, err)
		case tc.code == "" && !slices.Equal(got, tc.want):
			t.Errorf("params %q: rows %v, want %v", tc.params, got, tc.want)
		}
	}
}

// TestRunReportsFailures checks errors from sources, emit, limits and
// types.
func TestRunReportsFailures(t *testing.T) {
	boom := errors.New("shard connection lost")
	p := mustAnalyze(t, "SELECT a FROM t ORDER BY a")
	failing := newSource([]string{"1"})
	failing.err = boom
	if _, err := run(t, p, nil, desc(0, oidInt4), Options{}, newSource([]string{"2"}), failing); !errors.Is(err, boom) {
		t.Errorf("source error: got %v", err)
	}

	stop := errors.New("client gone")
	_, err := p.Run(nil, nil, desc(0, oidInt4), nil, []Source{newSource([]string{"1"}, []string{"2"})},
		func([]byte) error { return stop }, Options{})
	if !errors.Is(err, stop) {
		t.Errorf("emit error: got %v", err)
	}

	expectCode := func(what string, err error, code pgerr.Code, msg string) {
		t.Helper()
		var pe *pgerr.Error
		if !errors.As(err, &pe) || pe.Code != code || !strings.Contains(pe.Message, msg) {
			t.Errorf("%s: got %v, want %s containing %q", what, err, code, msg)
		}
	}
	g := mustAnalyze(t, "SELECT DISTINCT a FROM t")
	_, err = run(t, g, nil, desc(0, oidInt4), Options{MaxRows: 2}, newSource([]string{"1"}, []string{"2"}), newSource([]string{"3"}))
	expectCode("max rows", err, pgerr.ProgramLimitExceeded, "more than 2 rows")

	_, err = run(t, p, nil, desc(0, 1009), Options{}, newSource([]string{"{1}"}))
	expectCode("unknown type", err, pgerr.FeatureNotSupported, "cannot sort values of type oid 1009 across shards")

	_, err = run(t, p, nil, desc(0, oidJSON), Options{}, newSource([]string{"{}"}))
	expectCode("json", err, pgerr.FeatureNotSupported, "cannot sort values of type json")

	_, err = run(t, p, nil, desc(0, oidTimestamptz), Options{}, newSource([]string{"Sat Jan 01 00:00:00 2000 PST"}))
	expectCode("DateStyle", err, pgerr.FeatureNotSupported, "cannot read text value")

	_, err = p.Run(nil, nil, desc(1, oidInt4), []int16{0}, []Source{newSource()}, func([]byte) error { return nil }, Options{})
	expectCode("formats", err, pgerr.ProtocolViolation, "format")

	_, err = run(t, p, nil, desc(0, oidInt4, oidInt4), Options{}, newSource())
	expectCode("columns", err, pgerr.ProtocolViolation, "columns")

	_, err = run(t, p, nil, desc(0, oidInt4), Options{}, newSource([]string{"1", "2"}))
	expectCode("row width", err, pgerr.ProtocolViolation, "data row has 2 columns")
}

// TestRunSortsEnumsBySortOrder checks that enums sort by enumsortorder.
func TestRunSortsEnumsBySortOrder(t *testing.T) {
	const prio = 90001
	opt := Options{EnumOrder: func(oid uint32) (map[string]float64, bool) {
		if oid != prio {
			return nil, false
		}
		return map[string]float64{"LOW": 1, "HIGH": 3, "URGENT": 3.5, "CRITICAL": 4}, true
	}}
	p := mustAnalyze(t, "SELECT DISTINCT p FROM t ORDER BY p DESC")
	got, err := run(t, p, nil, desc(0, prio), opt,
		newSource([]string{"LOW"}, []string{"URGENT"}), newSource([]string{"CRITICAL"}, []string{"HIGH"}, []string{"LOW"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"CRITICAL", "URGENT", "HIGH", "LOW"}; !slices.Equal(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	_, err = run(t, p, nil, desc(0, prio), opt, newSource([]string{"MEDIUM"}))
	var pe *pgerr.Error
	if !errors.As(err, &pe) || pe.Code != pgerr.FeatureNotSupported || !pe.Retryable {
		t.Errorf("unknown label: got %v", err)
	}
	if _, err := run(t, p, nil, desc(0, prio), Options{}, newSource([]string{"LOW"})); err == nil {
		t.Errorf("an enum without EnumOrder was sorted")
	}
}

// TestDescribeGivesTheClientsColumns checks that hidden columns are
// dropped and avg columns retyped.
func TestDescribeGivesTheClientsColumns(t *testing.T) {
	p := mustAnalyze(t, "SELECT avg(i), avg(f), avg(iv), avg(n), count(*) FROM t ORDER BY avg(s)")
	shard := []field{
		{name: []byte("avg"), typ: oidInt8, typlen: 8, typmod: -1, format: 1},
		{name: []byte("avg"), typ: oidFloat4, typlen: 4, typmod: -1},
		{name: []byte("avg"), typ: oidInterval, typlen: 16, typmod: -1},
		{name: []byte("avg"), typ: oidNumeric, typlen: -1, typmod: 655366},
		{name: []byte("count"), typ: oidInt8, typlen: 8, typmod: -1},
		{name: []byte("_merge_h1"), typ: oidInt8, typlen: 8, typmod: -1, format: 1},
		{name: []byte("_merge_h2"), typ: oidInt8, typlen: 8, typmod: -1, format: 1},
		{name: []byte("_merge_h3"), typ: oidInt8, typlen: 8, typmod: -1, format: 1},
		{name: []byte("_merge_h4"), typ: oidInt8, typlen: 8, typmod: -1, format: 1},
		{name: []byte("_merge_h5"), typ: oidNumeric, typlen: -1, typmod: -1, format: 1},
		{name: []byte("_merge_h6"), typ: oidInt8, typlen: 8, typmod: -1, format: 1},
	}
	got, err := p.Describe(appendRowDesc(nil, shard))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := parseRowDesc(got)
	if err != nil {
		t.Fatal(err)
	}
	want := []field{
		{name: []byte("avg"), typ: oidNumeric, typlen: -1, typmod: -1, format: 1},
		{name: []byte("avg"), typ: oidFloat8, typlen: 8, typmod: -1},
		{name: []byte("avg"), typ: oidInterval, typlen: 16, typmod: -1},
		{name: []byte("avg"), typ: oidNumeric, typlen: -1, typmod: -1},
		{name: []byte("count"), typ: oidInt8, typlen: 8, typmod: -1},
	}
	if len(fs) != len(want) {
		t.Fatalf("%d fields, want %d", len(fs), len(want))
	}
	for i := range want {
		if string(fs[i].name) != string(want[i].name) || fs[i].typ != want[i].typ || fs[i].typlen != want[i].typlen ||
			fs[i].typmod != want[i].typmod || fs[i].format != want[i].format {
			t.Errorf("field %d = %+v, want %+v", i, fs[i], want[i])
		}
	}
	if _, err := p.Describe([]byte{0, 1, 'x'}); err == nil {
		t.Errorf("a truncated row description was accepted")
	}
}

// TestShardResultFormats checks the mapping of the client's Bind result
// formats.
func TestShardResultFormats(t *testing.T) {
	hidden := mustAnalyze(t, "SELECT a, b FROM t ORDER BY c") // one hidden column
	plain := mustAnalyze(t, "SELECT a, b FROM t ORDER BY a")
	tests := []struct {
		p      *Plan
		client []int16
		n      int
		want   []int16
	}{
		{hidden, nil, 3, nil},
		{hidden, []int16{0}, 3, []int16{0}},
		{hidden, []int16{1}, 3, []int16{1}},
		{hidden, []int16{0, 0}, 3, []int16{0, 0, 0}},
		{hidden, []int16{1, 0}, 3, []int16{1, 0, 1}},
		{hidden, []int16{1, 0, 1}, 3, []int16{1, 0, 1}}, // wrong count: left for the server to reject
		{plain, nil, 2, nil},
		{plain, []int16{0, 1}, 2, []int16{0, 1}},
	}
	for _, tc := range tests {
		if got := tc.p.ShardResultFormats(tc.client, tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("%s: ShardResultFormats(%v, %d) = %v, want %v", tc.p.ShardSQL(), tc.client, tc.n, got, tc.want)
		}
	}
}

// TestPlanIsSafeForConcurrentRuns runs one plan from several goroutines
// (meaningful under -race).
func TestPlanIsSafeForConcurrentRuns(t *testing.T) {
	p := mustAnalyze(t, "SELECT g, avg(x) FROM t GROUP BY g ORDER BY 2 DESC, g LIMIT 2")
	rd := desc(0, oidText, oidInt8, oidInt8)
	done := make(chan error)
	for range 8 {
		go func() {
			var rows int
			_, err := p.Run(nil, nil, rd, nil, []Source{
				newSource([]string{"a", "10", "2"}, []string{"b", "3", "1"}),
				newSource([]string{"a", "2", "2"}, []string{"c", "9", "1"}),
			}, func([]byte) error { rows++; return nil }, Options{})
			if err == nil && rows != 2 {
				err = errors.New("wrong row count")
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
