package fanout

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

func TestParseCopyReadsTheOptionsThatSplittingNeeds(t *testing.T) {
	cases := []struct {
		sql  string
		want copyOptions
	}{
		{"COPY events (team_id, id) FROM STDIN", copyOptions{from: true, table: "events", columns: []string{"team_id", "id"}, format: "text", delim: '\t', quote: '"', null: `\N`}},
		{"COPY app.events FROM STDIN WITH (FORMAT csv, HEADER)", copyOptions{from: true, table: "app.events", format: "csv", delim: ',', quote: '"', escape: '"', header: true}},
		{"COPY events FROM STDIN (FORMAT csv, DELIMITER ';', QUOTE '''', NULL 'x', HEADER false)", copyOptions{from: true, table: "events", format: "csv", delim: ';', quote: '\'', escape: '\'', null: "x"}},
		{"COPY (SELECT 1) TO STDOUT", copyOptions{format: "text", delim: '\t', quote: '"', null: `\N`}},
	}
	for _, c := range cases {
		got, ok := parseCopy(c.sql)
		if !ok {
			t.Errorf("%q: not parsed as COPY", c.sql)
			continue
		}
		if got.from != c.want.from || got.table != c.want.table || strings.Join(got.columns, ",") != strings.Join(c.want.columns, ",") ||
			got.format != c.want.format || got.delim != c.want.delim || got.quote != c.want.quote || got.escape != c.want.escape ||
			got.null != c.want.null || got.header != c.want.header {
			t.Errorf("%q:\n got %+v\nwant %+v", c.sql, got, c.want)
		}
	}
	for _, sql := range []string{"SELECT 1", "COPY t FROM STDIN; COPY u FROM STDIN", "COPY nonsense ("} {
		if _, ok := isCopy(sql); ok {
			t.Errorf("%q parsed as one COPY", sql)
		}
	}
	for _, sql := range []string{"copy t from stdin", "/* load */ COPY t FROM STDIN", "-- load\n\fCOPY t FROM STDIN"} {
		if o, ok := isCopy(sql); !ok || !o.from || o.table != "t" {
			t.Errorf("%q: isCopy = %+v, %v; want COPY FROM of t", sql, o, ok)
		}
	}
}

// newTestSplitter splits a COPY into events (keyed by team_id) across the
// two shards of a test map.
func newTestSplitter(t *testing.T, sql string, nullShard string) *copySplitter {
	t.Helper()
	m, err := router.ParseMap([]byte(`
key_type: uuid
shards:
  - {name: shard-0, primary: "127.0.0.1:5001"}
  - {name: shard-1, primary: "127.0.0.1:5011"}
tables:
  events: {sharded_by: team_id}
`))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(m)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := parseCopy(sql)
	if !ok {
		t.Fatalf("%q: not a COPY", sql)
	}
	s, err := newCopySplitter(o, &router.CopySplit{Table: "events", KeyColumn: "team_id", NullShard: nullShard}, rt,
		[]string{"shard-0", "shard-1"}, []router.Column{{Name: "id"}, {Name: "team_id"}, {Name: "note"}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// teamOn returns a team key the test map places on shard.
func teamOn(t *testing.T, s *copySplitter, shard string) string {
	t.Helper()
	for i := range 1000 {
		k := fmt.Sprintf("%08x-0000-4000-8000-000000000000", i)
		key, err := s.rt.ParseKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if s.rt.Place(key) == shard {
			return k
		}
	}
	t.Fatalf("no test key on %s", shard)
	return ""
}

func TestCopySplitterSendsEachRowToItsKeysShardAcrossDataMessages(t *testing.T) {
	s := newTestSplitter(t, "COPY events FROM STDIN", "")
	a, b := teamOn(t, s, "shard-0"), teamOn(t, s, "shard-1")
	data := "1\t" + a + "\tfirst\n2\t" + b + "\tsecond, with a tab: \\t\n3\t" + a + "\tthird\n"
	// Split mid-row: a row is routed once complete.
	if err := s.add([]byte(data[:7])); err != nil {
		t.Fatal(err)
	}
	if err := s.add([]byte(data[7:])); err != nil {
		t.Fatal(err)
	}
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if got, want := string(s.pending[0]), "1\t"+a+"\tfirst\n3\t"+a+"\tthird\n"; got != want {
		t.Errorf("shard-0 got %q, want %q", got, want)
	}
	if got, want := string(s.pending[1]), "2\t"+b+"\tsecond, with a tab: \\t\n"; got != want {
		t.Errorf("shard-1 got %q, want %q", got, want)
	}
}

func TestCopySplitterKeepsABackslashNewlineInsideItsRow(t *testing.T) {
	s := newTestSplitter(t, "COPY events (team_id, note) FROM STDIN", "")
	a, b := teamOn(t, s, "shard-0"), teamOn(t, s, "shard-1")
	// Postgres reads two, a backslash, a newline and lines as one value
	// with a newline in it; an escaped backslash escapes no newline.
	rowA := a + "\ttwo\\\nlines\n"
	rowB := b + "\tends in a backslash \\\\\n"
	data := rowA + rowB + "\\.\n"
	// Cut right after the backslash: the newline that follows is data.
	cut := strings.Index(data, "\\\n") + 1
	if err := s.add([]byte(data[:cut])); err != nil {
		t.Fatal(err)
	}
	if err := s.add([]byte(data[cut:])); err != nil {
		t.Fatal(err)
	}
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if got := string(s.pending[0]); got != rowA {
		t.Errorf("shard-0 got %q, want %q", got, rowA)
	}
	if got := string(s.pending[1]); got != rowB {
		t.Errorf("shard-1 got %q, want %q", got, rowB)
	}
}

func TestCopySplitterReadsQuotedCSVAndSendsTheHeaderEverywhere(t *testing.T) {
	s := newTestSplitter(t, "COPY events (note, team_id) FROM STDIN (FORMAT csv, HEADER)", "")
	a, b := teamOn(t, s, "shard-0"), teamOn(t, s, "shard-1")
	rows := "note,team_id\n\"two\nlines, and \"\"quotes\"\"\",\"" + a + "\"\nplain," + b // the last row lacks its newline
	if err := s.add([]byte(rows)); err != nil {
		t.Fatal(err)
	}
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if got, want := string(s.pending[0]), "note,team_id\n\"two\nlines, and \"\"quotes\"\"\",\""+a+"\"\n"; got != want {
		t.Errorf("shard-0 got %q, want %q", got, want)
	}
	if got, want := string(s.pending[1]), "note,team_id\nplain,"+b+"\n"; got != want {
		t.Errorf("shard-1 got %q, want %q", got, want)
	}
}

func TestCopySplitterRefusesRowsWithoutAShard(t *testing.T) {
	s := newTestSplitter(t, "COPY events FROM STDIN", "")
	err := s.add([]byte("1\t\\N\tnull key\n"))
	if e := pgerr.From(err); e.Code != pgerr.NotNullViolation {
		t.Errorf("NULL key: %v, want 23502", err)
	}
	s = newTestSplitter(t, "COPY events FROM STDIN", "")
	if e := pgerr.From(s.add([]byte("1\n"))); e.Code != pgerr.BadCopyFileFormat {
		t.Errorf("missing key column: %v, want 22P04", e)
	}
	s = newTestSplitter(t, "COPY events FROM STDIN", "shard-1")
	if err := s.add([]byte("1\t\\N\tnull key\n\\.\n2\tignored after the end marker\n")); err != nil {
		t.Fatal(err)
	}
	if got := string(s.pending[1]); got != "1\t\\N\tnull key\n" {
		t.Errorf("NULL key with a null shard: shard-1 got %q", got)
	}
}

func TestAStatementJoinsARequestOnlyOnTheSameShardsAndNoWriteJoinsARead(t *testing.T) {
	p := func(readOnly bool, shards ...string) *Plan {
		pl := &Plan{ReadOnly: readOnly}
		for _, s := range shards {
			pl.Targets = append(pl.Targets, router.Target{Shard: s})
		}
		return pl
	}
	cases := []struct {
		p, q *Plan
		want bool
	}{
		{p(true, "a", "b"), p(true, "a", "b"), true},
		{p(false, "a", "b"), p(true, "a", "b"), true},
		{p(false, "a", "b"), p(false, "a", "b"), true},
		{p(true, "a", "b"), p(false, "a", "b"), false}, // a read's legs may be replicas
		{p(true, "a", "b"), p(true, "a"), false},
		{p(true, "a", "b"), p(true, "b", "a"), false},
	}
	for i, c := range cases {
		if got := c.p.Joins(c.q); got != c.want {
			t.Errorf("case %d: Joins = %v, want %v", i, got, c.want)
		}
	}
}

// FuzzCopySplitter feeds random COPY data, in the text and the CSV
// format, to the splitter in two CopyData messages cut at a random point:
// no panic, failures are client errors (*pgerr.Error), and where the
// messages are cut changes nothing: each shard gets what it gets from the
// data in one message.
func FuzzCopySplitter(f *testing.F) {
	f.Add("1\t00000000-0000-4000-8000-000000000000\tx\n2\t\\N\tb\\\tc\n\\.\n", uint(5), false)
	f.Add("id,team_id,note\n1,\"00000001-0000-4000-8000-000000000000\",\"a\nb\"\n2,00000000-0000-4000-8000-000000000000,", uint(20), true)
	f.Fuzz(func(t *testing.T, data string, cut uint, csv bool) {
		sql := "COPY events (id, team_id, note) FROM STDIN"
		if csv {
			sql += " (FORMAT csv, HEADER)"
		}
		run := func(parts ...string) ([][]byte, error) {
			s := newTestSplitter(t, sql, "")
			for _, p := range parts {
				if err := s.add([]byte(p)); err != nil {
					return nil, err
				}
			}
			err := s.finish()
			return s.pending, err
		}
		whole, errWhole := run(data)
		k := int(cut % uint(len(data)+1))
		cutUp, errCut := run(data[:k], data[k:])
		for _, err := range []error{errWhole, errCut} {
			if _, ok := err.(*pgerr.Error); err != nil && !ok {
				t.Fatalf("%q: %T %v is not a client error", data, err, err)
			}
		}
		if (errWhole == nil) != (errCut == nil) {
			t.Fatalf("%q cut at %d: error %v, in one message %v", data, k, errCut, errWhole)
		}
		if errWhole == nil && !reflect.DeepEqual(whole, cutUp) {
			t.Fatalf("%q cut at %d: shards get %q, in one message %q", data, k, cutUp, whole)
		}
	})
}
