package fanout

import (
	"bytes"
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/router"
)

// COPY across shards. COPY … FROM STDIN into a sharded table runs on every
// shard at once; the sidecar reads the client's rows (text or CSV) and
// sends each to the shard of its key, inside the request's transaction
// (committed on every shard or none). Into a replicated table every shard
// gets every row. COPY … TO STDOUT of rows on several shards concatenates
// the shards' rows. Binary COPY across shards is refused.

// copyOptions are the options of one COPY statement that matter to the
// sidecar.
type copyOptions struct {
	from    bool
	table   string   // as named, for COPY table (not COPY (query))
	columns []string // the column list, nil when absent
	format  string   // text, csv or binary
	delim   byte
	quote   byte
	escape  byte
	null    string
	header  bool
}

// parseCopy reads a COPY statement's options; ok is false when sql is not
// one COPY statement.
func parseCopy(sql string) (copyOptions, bool) {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.GetStmts()) != 1 {
		return copyOptions{}, false
	}
	cp := tree.GetStmts()[0].GetStmt().GetCopyStmt()
	if cp == nil {
		return copyOptions{}, false
	}
	o := copyOptions{from: cp.GetIsFrom(), format: "text", delim: '\t', quote: '"', null: `\N`}
	if r := cp.GetRelation(); r != nil {
		o.table = r.GetRelname()
		if r.GetSchemaname() != "" {
			o.table = r.GetSchemaname() + "." + o.table
		}
	}
	for _, c := range cp.GetAttlist() {
		o.columns = append(o.columns, c.GetString_().GetSval())
	}
	quoteSet, escapeSet, nullSet, delimSet := false, false, false, false
	for _, opt := range cp.GetOptions() {
		d := opt.GetDefElem()
		arg := d.GetArg()
		str := arg.GetString_().GetSval()
		if str == "" {
			str = arg.GetAConst().GetSval().GetSval()
		}
		switch d.GetDefname() {
		case "format":
			o.format = strings.ToLower(str)
		case "delimiter":
			if len(str) == 1 {
				o.delim, delimSet = str[0], true
			}
		case "quote":
			if len(str) == 1 {
				o.quote, quoteSet = str[0], true
			}
		case "escape":
			if len(str) == 1 {
				o.escape, escapeSet = str[0], true
			}
		case "null":
			o.null, nullSet = str, true
		case "header":
			o.header = arg == nil || str == "" && arg.GetBoolean() == nil && arg.GetInteger() == nil ||
				arg.GetBoolean().GetBoolval() || arg.GetInteger().GetIval() != 0 ||
				strings.EqualFold(str, "true") || strings.EqualFold(str, "on") || strings.EqualFold(str, "match")
		}
	}
	_ = quoteSet
	if o.format == "csv" {
		if !delimSet {
			o.delim = ','
		}
		if !nullSet {
			o.null = ""
		}
		if !escapeSet {
			o.escape = o.quote
		}
	}
	return o, true
}

// copySplitter sends the rows of a COPY FROM STDIN into a sharded table to
// their shards: it finds each complete row in the client's data, reads its
// key column and appends the row to its leg's pending data.
type copySplitter struct {
	o       copyOptions
	key     int // index of the key column in each row
	split   *router.CopySplit
	rt      *router.Router
	legOf   map[string]int // shard → index in the request's legs
	pending [][]byte       // per leg, rows to send
	buf     []byte         // an incomplete row carried to the next CopyData
	header  bool           // the header row is still to come
	ended   bool           // the end-of-data marker was read
	rows    int64
}

// newCopySplitter prepares the split of a COPY into split.Table; cols are
// the table's columns when the statement lists none.
func newCopySplitter(o copyOptions, split *router.CopySplit, rt *router.Router, shards []string, cols []router.Column) (*copySplitter, error) {
	names := o.columns
	if names == nil {
		for _, c := range cols {
			names = append(names, c.Name)
		}
	}
	key := -1
	for i, n := range names {
		if strings.EqualFold(n, split.KeyColumn) {
			key = i
		}
	}
	if key < 0 && split.NullShard == "" {
		e := pgerr.Errorf(pgerr.ServerRejected, "COPY into sharded table %q lists no %s column", split.Table, split.KeyColumn)
		e.Hint = "include the key column in the COPY column list"
		return nil, e
	}
	s := &copySplitter{o: o, key: key, split: split, rt: rt, legOf: map[string]int{}, pending: make([][]byte, len(shards)), header: o.header}
	for i, sh := range shards {
		s.legOf[sh] = i
	}
	return s, nil
}

// add takes one CopyData body from the client and routes its complete
// rows.
func (s *copySplitter) add(data []byte) error {
	s.buf = append(s.buf, data...)
	rest := s.buf
	for len(rest) > 0 && !s.ended {
		end := s.rowEnd(rest)
		if end < 0 {
			break
		}
		row := rest[:end]
		rest = rest[end:]
		if err := s.route(row); err != nil {
			return err
		}
	}
	s.buf = append(s.buf[:0], rest...)
	return nil
}

// finish routes a last row that lacks its newline.
func (s *copySplitter) finish() error {
	if len(s.buf) == 0 || s.ended {
		return nil
	}
	row := append(s.buf, '\n')
	s.buf = nil
	return s.route(row)
}

// rowEnd returns the length of the first complete row in b (newline
// included), or -1.
func (s *copySplitter) rowEnd(b []byte) int {
	if s.o.format != "csv" {
		// A backslash escapes the next byte, a newline included: Postgres
		// reads backslash-newline as a newline in the data, not as the
		// row's end.
		for i := 0; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '\n':
				return i + 1
			}
		}
		return -1
	}
	inQuote := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inQuote && c == s.o.escape && s.o.escape != s.o.quote && i+1 < len(b) && (b[i+1] == s.o.quote || b[i+1] == s.o.escape):
			i++
		case c == s.o.quote:
			inQuote = !inQuote
		case c == '\n' && !inQuote:
			return i + 1
		}
	}
	return -1
}

// route sends one row (newline included) to the shard of its key; the
// header row goes to every shard.
func (s *copySplitter) route(row []byte) error {
	line := bytes.TrimRight(row, "\r\n")
	if s.o.format != "csv" && string(line) == `\.` || s.o.format == "csv" && string(line) == `\.` {
		s.ended = true
		return nil
	}
	if s.header {
		s.header = false
		for i := range s.pending {
			s.pending[i] = append(s.pending[i], row...)
		}
		return nil
	}
	s.rows++
	shard := s.split.NullShard
	if s.key >= 0 {
		v, null, ok := s.field(line, s.key)
		if !ok {
			return pgerr.Errorf(pgerr.BadCopyFileFormat, "missing data for column %q in row %d of the COPY", s.split.KeyColumn, s.rows)
		}
		if !null {
			k, err := s.rt.ParseKey(v)
			if err != nil {
				return pgerr.From(err).WithDetail(fmt.Sprintf("In row %d of the COPY into %s.", s.rows, s.split.Table))
			}
			shard = s.rt.Place(k)
		}
	}
	if shard == "" {
		return pgerr.Errorf(pgerr.NotNullViolation, "row %d of the COPY into sharded table %s has no %s: it has no shard", s.rows, s.split.Table, s.split.KeyColumn)
	}
	i, ok := s.legOf[shard]
	if !ok {
		return pgerr.Errorf(pgerr.ServerRejected, "shard %q is not among the shards of the COPY", shard)
	}
	s.pending[i] = append(s.pending[i], row...)
	return nil
}

// field returns the text of field i of a row: unescaped (text format) or
// unquoted (CSV), and whether it is NULL.
func (s *copySplitter) field(line []byte, i int) (string, bool, bool) {
	if s.o.format != "csv" {
		n := 0
		start := 0
		for j := 0; j <= len(line); j++ {
			if j < len(line) && line[j] == '\\' {
				j++
				continue
			}
			if j == len(line) || line[j] == s.o.delim {
				if n == i {
					raw := string(line[start:j])
					if raw == s.o.null {
						return "", true, true
					}
					return unescapeCopyText(raw), false, true
				}
				n++
				start = j + 1
			}
		}
		return "", false, false
	}
	n, start, inQuote := 0, 0, false
	for j := 0; j <= len(line); j++ {
		if j < len(line) {
			c := line[j]
			switch {
			case inQuote && c == s.o.escape && s.o.escape != s.o.quote && j+1 < len(line):
				j++
				continue
			case c == s.o.quote:
				inQuote = !inQuote
				continue
			case c != s.o.delim || inQuote:
				continue
			}
		}
		if n == i {
			raw := string(line[start:j])
			if len(raw) >= 2 && raw[0] == s.o.quote && raw[len(raw)-1] == s.o.quote {
				inner := raw[1 : len(raw)-1]
				return strings.ReplaceAll(inner, string([]byte{s.o.escape, s.o.quote}), string(s.o.quote)), false, true
			}
			return raw, raw == s.o.null, true
		}
		n++
		start = j + 1
	}
	return "", false, false
}

// unescapeCopyText undoes COPY's text-format backslash escapes.
func unescapeCopyText(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// copyIn runs the COPY FROM STDIN phase of a request spanning shards: once
// every leg answered CopyInResponse, the client gets one and its data goes
// to the legs (split by key, or all of it to every leg of a replicated
// table) until CopyDone or CopyFail. A leg that failed to start the COPY
// fails the request before the client sends anything.
func (f *Request) copyIn(sql string) error {
	var first []byte
	started := make([]bool, len(f.legs))
	failed := false
	for i, l := range f.legs {
		ok, err := f.skipInjected(l)
		if err != nil {
			return err
		}
		if !ok {
			failed = true
			continue
		}
		for {
			typ, _, body, err := f.next(l)
			if err != nil {
				return err
			}
			if typ == 'G' {
				started[i] = true
				if first == nil {
					first = append([]byte(nil), body...)
				}
				break
			}
			if typ == 'E' {
				f.failLeg(l, body)
				failed = true
				break
			}
			if typ == 'Z' || typ == 'C' {
				return f.legLost(l, fmt.Errorf("COPY answered %q instead of CopyInResponse", typ))
			}
		}
	}
	fail := func(msg string) error {
		for i, l := range f.legs {
			if started[i] {
				if err := f.write(l, wire.AppendCopyFail(nil, msg)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if failed {
		f.sendError(nil)
		return fail("COPY failed on another shard")
	}
	o, _ := parseCopy(sql)
	var split *copySplitter
	if f.plan.Copy != nil {
		if o.format == "binary" {
			return f.copyRefused(fail, pgerr.Errorf(pgerr.FeatureNotSupported, "binary COPY into a sharded table spanning shards is not supported"))
		}
		var cols []router.Column
		if o.columns == nil {
			var ok bool
			if cols, ok = f.columnsAfterCopy(o.table); !ok {
				return f.copyRefused(fail, pgerr.Errorf(pgerr.UndefinedTable, "cannot read the columns of %s", o.table))
			}
		}
		var err error
		if split, err = newCopySplitter(o, f.plan.Copy, f.env.Deps.Router, f.Shards(), cols); err != nil {
			return f.copyRefused(fail, pgerr.From(err))
		}
	}
	f.emit('G', first)
	f.flushClient()
	var rowErr error
	for {
		typ, n, err := f.env.Client.Next()
		if err != nil {
			_ = fail("client connection lost")
			return err
		}
		switch typ {
		case 'd':
			if n > MaxBody {
				rowErr = pgerr.Errorf(pgerr.ProgramLimitExceeded, "a COPY data message of %d bytes is too large", n)
			}
			body, err := f.env.Client.Body()
			if err != nil {
				return err
			}
			if rowErr != nil {
				continue
			}
			if split == nil {
				for _, l := range f.legs {
					if err := f.write(l, append(wire.AppendHeader(nil, 'd', len(body)), body...)); err != nil {
						return err
					}
				}
				continue
			}
			if rowErr = split.add(body); rowErr == nil {
				if err := f.sendPending(split); err != nil {
					return err
				}
			}
		case 'c':
			if rowErr == nil && split != nil {
				if rowErr = split.finish(); rowErr == nil {
					if err := f.sendPending(split); err != nil {
						return err
					}
				}
			}
			if rowErr != nil {
				f.sendError(pgerr.From(rowErr).Encode(nil)[5:])
				return fail(pgerr.From(rowErr).Message)
			}
			for _, l := range f.legs {
				if err := f.write(l, []byte{'c', 0, 0, 0, 4}); err != nil {
					return err
				}
			}
			return nil
		case 'f':
			body, err := f.env.Client.Body()
			if err != nil {
				return err
			}
			msg := string(bytes.TrimRight(body, "\x00"))
			return fail(msg)
		case 'H', 'S':
			// Ignored during COPY, as Postgres does.
		default:
			_ = fail("protocol violation")
			return pgerr.Fatalf(pgerr.ProtocolViolation, "unexpected message type %q during COPY from stdin", typ)
		}
	}
}

// copyRefused refuses a COPY the sidecar cannot split: the legs' COPY is
// failed and the client gets e (it has sent no data yet: it waits for
// CopyInResponse).
func (f *Request) copyRefused(fail func(string) error, e *pgerr.Error) error {
	f.env.Deps.Metrics.Refused.WithLabelValues("copy").Inc()
	f.sendError(e.Encode(nil)[5:])
	return fail(e.Message)
}

// columnsAfterCopy reads a table's columns while the legs are in COPY:
// from the column cache only (the legs are busy).
func (f *Request) columnsAfterCopy(table string) ([]router.Column, bool) {
	cols, _, ok := f.env.Deps.Catalog.columns.get(table)
	return cols, ok && cols != nil
}

// sendPending writes each leg's pending rows as one CopyData message.
func (f *Request) sendPending(s *copySplitter) error {
	for i, l := range f.legs {
		if len(s.pending[i]) == 0 {
			continue
		}
		msg := append(wire.AppendHeader(nil, 'd', len(s.pending[i])), s.pending[i]...)
		s.pending[i] = s.pending[i][:0]
		if err := f.write(l, msg); err != nil {
			return err
		}
	}
	return nil
}
