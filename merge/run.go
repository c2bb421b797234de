package merge

import (
	"container/heap"
	"slices"
	"strings"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// Source is one shard's stream of rows for ShardSQL. Next returns the next
// DataRow body (the bytes after the 5-byte header), or ok=false at the end
// of the shard's result, or an error, which Run returns at once. The body
// is only read until the next call to Next.
type Source interface {
	Next() (row []byte, ok bool, err error)
}

// Options are the merge's dependencies and limits.
type Options struct {
	// EnumOrder returns the sort position of each label of the enum type
	// oid (pg_enum.enumsortorder), or ok=false if oid is not an enum. Enum
	// columns sort by it, never by label text. Nil means no enums are
	// known: sorting or grouping by an enum column fails with 0A000.
	EnumOrder func(oid uint32) (map[string]float64, bool)
	// MaxRows bounds the rows a merge holds in memory (aggregates, groups,
	// DISTINCT); past it Run fails with 54000 program_limit_exceeded.
	// 0 means DefaultMaxRows.
	MaxRows int
}

// DefaultMaxRows is Options.MaxRows when it is 0.
const DefaultMaxRows = 1_000_000

// SQLSTATEs of the server's own LIMIT and OFFSET checks, which Run repeats
// for parameters because the shards see limit + offset instead.
const (
	codeInvalidLimit  pgerr.Code = "2201W" // invalid_row_count_in_limit_clause
	codeInvalidOffset pgerr.Code = "2201X" // invalid_row_count_in_result_offset_clause
	codeOutOfRange    pgerr.Code = "22003" // numeric_value_out_of_range
)

// Run merges one execution of ShardSQL on several shards into the rows
// the client's statement returns, and returns how many it emitted.
//
// params and paramFormats are the Bind's parameter values and format codes
// (nil for a simple Query); they are read only when LIMIT or OFFSET is a
// parameter (text, or binary int2, int4 or int8). rowDesc is a shard's
// RowDescription body for ShardSQL whose format codes are those the shards
// send: the simple Query's RowDescription, or the portal's for a Bind made
// with ShardResultFormats (a statement's will do when the client asked
// only for text). clientFormats are the client's Bind result-format codes
// (nil for a simple Query); each client column's code must match
// rowDesc's, or Run fails with 08P01 before reading anything. sources
// yield each shard's rows in the order the shard returns them; emit
// receives the client's DataRow bodies in order, in the client's format
// per column, valid only during the call. An error from a source or from
// emit is returned as is, at once.
//
// ORDER BY without grouping or DISTINCT is a k-way merge that holds one
// row per shard and pulls lazily; LIMIT stops pulling once reached, leaving
// the rest of each source to the caller to drain. Aggregates, GROUP BY and
// DISTINCT read everything (at most Options.MaxRows rows), combine, then
// sort and apply OFFSET and LIMIT. Run is safe for concurrent use on one
// Plan; it starts no goroutines.
func (p *Plan) Run(params [][]byte, paramFormats []int16, rowDesc []byte, clientFormats []int16, sources []Source, emit func(row []byte) error, opt Options) (int64, error) {
	fs, err := parseRowDesc(rowDesc)
	if err != nil {
		return 0, err
	}
	c, err := p.clientColumns(len(fs))
	if err != nil {
		return 0, err
	}
	if err := checkFormats("result", clientFormats, c); err != nil {
		return 0, err
	}
	for i := 0; i < c; i++ {
		if f := formatOf(clientFormats, i); fs[i].format != f {
			return 0, pgerr.Errorf(pgerr.ProtocolViolation,
				"merge: column %d is sent in format %d but the client asked for %d; bind the shards with ShardResultFormats and pass the portal's row description", i+1, fs[i].format, f)
		}
	}
	if err := checkFormats("parameter", paramFormats, len(params)); err != nil {
		return 0, err
	}
	r := &runner{p: p, fs: fs, n: len(fs), c: c, opt: opt, emit: emit}
	if r.maxRows = opt.MaxRows; r.maxRows <= 0 {
		r.maxRows = DefaultMaxRows
	}
	if r.limit, err = p.limit.resolve(params, paramFormats, "LIMIT"); err != nil {
		return 0, err
	}
	if r.offset, err = p.offset.resolve(params, paramFormats, "OFFSET"); err != nil {
		return 0, err
	}
	if r.offset < 0 {
		r.offset = 0
	}
	if p.agg || p.distinct {
		return r.collect(sources)
	}
	return r.stream(sources)
}

// resolve returns the bound's value for one execution, or -1 for none.
func (b bound) resolve(params [][]byte, formats []int16, clause string) (int64, error) {
	if !b.set {
		return -1, nil
	}
	if b.param < 0 {
		return b.val, nil
	}
	if b.param >= len(params) {
		return 0, pgerr.Errorf(pgerr.ProtocolViolation, "merge: %s refers to parameter $%d but the Bind has %d", clause, b.param+1, len(params))
	}
	v := params[b.param]
	if v == nil {
		return -1, nil // LIMIT NULL is no limit, OFFSET NULL none
	}
	var n int64
	ok := false
	if formatOf(formats, b.param) == 1 {
		switch len(v) {
		case 2:
			n, ok = int64(int16(uint16(v[0])<<8|uint16(v[1]))), true
		case 4:
			n, ok = int64(int32(uint32(v[0])<<24|uint32(v[1])<<16|uint32(v[2])<<8|uint32(v[3]))), true
		case 8:
			var u uint64
			for _, x := range v {
				u = u<<8 | uint64(x)
			}
			n, ok = int64(u), true
		}
	} else {
		n, ok = roundToInt64([]byte(strings.TrimSpace(string(v))))
	}
	if !ok {
		return 0, pgerr.Errorf(pgerr.FeatureNotSupported, "cannot read the %s parameter $%d across shards", clause, b.param+1).
			WithHint("pass LIMIT and OFFSET as integers")
	}
	if n < 0 {
		code := codeInvalidLimit
		if clause == "OFFSET" {
			code = codeInvalidOffset
		}
		return 0, pgerr.Errorf(code, "%s must not be negative", clause)
	}
	return n, nil
}

// runner is one execution of Run.
type runner struct {
	p       *Plan
	fs      []field
	n, c    int
	opt     Options
	emit    func([]byte) error
	maxRows int
	limit   int64 // -1: none
	offset  int64

	out     []byte
	emitted int64
}

// keyCol is one column compared by the merge.
type keyCol struct {
	col        int
	t          *colType
	desc       bool
	nullsFirst bool
}

// keyVal is a decoded column value or NULL.
type keyVal struct {
	value
	null bool
}

// sortCols builds the ORDER BY key columns; types gives each column's
// type and format.
func (r *runner) sortCols(types func(int) (uint32, int16)) ([]keyCol, error) {
	ks := make([]keyCol, len(r.p.order))
	for i, k := range r.p.order {
		col := r.p.column(k.col, r.c)
		t, err := r.colType(col, types, "sort")
		if err != nil {
			return nil, err
		}
		ks[i] = keyCol{col: col, t: t, desc: k.desc, nullsFirst: k.nullsFirst}
	}
	return ks, nil
}

// eqCols builds key columns compared for equality only.
func (r *runner) eqCols(refs []colRef, types func(int) (uint32, int16), what string) ([]keyCol, error) {
	ks := make([]keyCol, len(refs))
	for i, ref := range refs {
		col := r.p.column(ref, r.c)
		t, err := r.colType(col, types, what)
		if err != nil {
			return nil, err
		}
		ks[i] = keyCol{col: col, t: t}
	}
	return ks, nil
}

func (r *runner) colType(col int, types func(int) (uint32, int16), what string) (*colType, error) {
	oid, format := types(col)
	return newColType(oid, format, &r.opt, what)
}

// shardTypes gives the shards' column types and formats.
func (r *runner) shardTypes(col int) (uint32, int16) { return r.fs[col].typ, r.fs[col].format }

// decodeKeys decodes the key columns of a row into out.
func decodeKeys(cols [][]byte, ks []keyCol, out []keyVal) error {
	for i, k := range ks {
		v := cols[k.col]
		if v == nil {
			out[i] = keyVal{null: true}
			continue
		}
		x, err := k.t.decode(v)
		if err != nil {
			return err
		}
		out[i] = keyVal{value: x}
	}
	return nil
}

// cmpKeys orders two rows' keys: ORDER BY semantics for sort keys, and
// NULLs equal to each other (last) for equality keys.
func cmpKeys(ks []keyCol, a, b []keyVal) int {
	for i, k := range ks {
		x, y := &a[i], &b[i]
		switch {
		case x.null && y.null:
			continue
		case x.null:
			if k.nullsFirst {
				return -1
			}
			return 1
		case y.null:
			if k.nullsFirst {
				return 1
			}
			return -1
		}
		if c := k.t.compare(&x.value, &y.value); c != 0 {
			if k.desc {
				return -c
			}
			return c
		}
	}
	return 0
}

// send emits the client's columns of a row.
func (r *runner) send(body []byte, cols [][]byte) error {
	if r.c == r.n && body != nil {
		r.emitted++
		return r.emit(body)
	}
	r.out = appendDataRow(r.out[:0], cols[:r.c])
	r.emitted++
	return r.emit(r.out)
}

// saved is a copy of a row and its keys, kept across pulls.
type saved struct {
	ok   bool
	buf  []byte
	cols [][]byte
	keys []keyVal
}

func (s *saved) set(cols [][]byte, ks []keyCol) error {
	s.buf = appendDataRow(s.buf[:0], cols)
	var err error
	if s.cols, err = splitRow(s.buf, len(cols), s.cols); err != nil {
		return err
	}
	if cap(s.keys) < len(ks) {
		s.keys = make([]keyVal, len(ks))
	}
	s.keys = s.keys[:len(ks)]
	s.ok = true
	return decodeKeys(s.cols, ks, s.keys)
}

// gate applies DISTINCT ON, OFFSET, LIMIT and WITH TIES to rows arriving
// in their final order, and emits the survivors.
type gate struct {
	r       *runner
	don     []keyCol // DISTINCT ON key
	ties    []keyCol // sort keys, for WITH TIES
	prev    saved    // last row past DISTINCT ON
	last    saved    // last row emitted, for WITH TIES
	scratch []keyVal
	skipped int64
	done    bool
}

func (r *runner) newGate(types func(int) (uint32, int16)) (*gate, error) {
	g := &gate{r: r}
	var err error
	if len(r.p.distinctOn) > 0 {
		if g.don, err = r.eqCols(r.p.distinctOn, types, "sort"); err != nil {
			return nil, err
		}
	}
	if r.p.withTies {
		if g.ties, err = r.sortCols(types); err != nil {
			return nil, err
		}
	}
	if r.limit == 0 {
		g.done = true
	}
	return g, nil
}

// take offers the next row; it returns false once no further row can be
// emitted.
func (g *gate) take(body []byte, cols [][]byte) (bool, error) {
	r := g.r
	if g.done {
		return false, nil
	}
	if len(g.don) > 0 {
		keys := g.keys(len(g.don))
		if err := decodeKeys(cols, g.don, keys); err != nil {
			return false, err
		}
		if g.prev.ok && cmpKeys(g.don, g.prev.keys, keys) == 0 {
			return true, nil
		}
		if err := g.prev.set(cols, g.don); err != nil {
			return false, err
		}
	}
	if g.skipped < r.offset {
		g.skipped++
		return true, nil
	}
	if r.limit >= 0 && r.emitted >= r.limit {
		if len(g.ties) == 0 || !g.last.ok {
			g.done = true
			return false, nil
		}
		keys := g.keys(len(g.ties))
		if err := decodeKeys(cols, g.ties, keys); err != nil {
			return false, err
		}
		if cmpKeys(g.ties, g.last.keys, keys) != 0 {
			g.done = true
			return false, nil
		}
	} else if len(g.ties) > 0 && r.limit >= 0 && r.emitted == r.limit-1 {
		if err := g.last.set(cols, g.ties); err != nil {
			return false, err
		}
	}
	if err := r.send(body, cols); err != nil {
		return false, err
	}
	if r.limit >= 0 && r.emitted >= r.limit && len(g.ties) == 0 {
		g.done = true
		return false, nil
	}
	return true, nil
}

func (g *gate) keys(n int) []keyVal {
	if cap(g.scratch) < n {
		g.scratch = make([]keyVal, n)
	}
	return g.scratch[:n]
}

// cursor is one source's current row in the k-way merge.
type cursor struct {
	src  Source
	idx  int
	buf  []byte
	cols [][]byte
	keys []keyVal
}

// pull reads the source's next row into the cursor.
func (cu *cursor) pull(r *runner, ks []keyCol) (bool, error) {
	row, ok, err := cu.src.Next()
	if err != nil || !ok {
		return false, err
	}
	cu.buf = append(cu.buf[:0], row...)
	if cu.cols, err = splitRow(cu.buf, r.n, cu.cols); err != nil {
		return false, err
	}
	if cu.keys == nil {
		cu.keys = make([]keyVal, len(ks))
	}
	return true, decodeKeys(cu.cols, ks, cu.keys)
}

type cursorHeap struct {
	ks []keyCol
	cs []*cursor
}

func (h *cursorHeap) Len() int { return len(h.cs) }
func (h *cursorHeap) Less(i, j int) bool {
	if c := cmpKeys(h.ks, h.cs[i].keys, h.cs[j].keys); c != 0 {
		return c < 0
	}
	return h.cs[i].idx < h.cs[j].idx
}
func (h *cursorHeap) Swap(i, j int) { h.cs[i], h.cs[j] = h.cs[j], h.cs[i] }
func (h *cursorHeap) Push(x any)    { h.cs = append(h.cs, x.(*cursor)) }
func (h *cursorHeap) Pop() any {
	x := h.cs[len(h.cs)-1]
	h.cs = h.cs[:len(h.cs)-1]
	return x
}

// stream merges rows without holding more than one per source.
func (r *runner) stream(sources []Source) (int64, error) {
	g, err := r.newGate(r.shardTypes)
	if err != nil || g.done {
		return r.emitted, err
	}
	if len(r.p.order) == 0 {
		var cols [][]byte
		for _, s := range sources {
			for {
				row, ok, err := s.Next()
				if err != nil {
					return r.emitted, err
				}
				if !ok {
					break
				}
				if cols, err = splitRow(row, r.n, cols); err != nil {
					return r.emitted, err
				}
				more, err := g.take(row, cols)
				if err != nil || !more {
					return r.emitted, err
				}
			}
		}
		return r.emitted, nil
	}
	ks, err := r.sortCols(r.shardTypes)
	if err != nil {
		return 0, err
	}
	h := &cursorHeap{ks: ks}
	for i, s := range sources {
		cu := &cursor{src: s, idx: i}
		ok, err := cu.pull(r, ks)
		if err != nil {
			return 0, err
		}
		if ok {
			h.cs = append(h.cs, cu)
		}
	}
	heap.Init(h)
	for h.Len() > 0 {
		cu := h.cs[0]
		more, err := g.take(cu.buf, cu.cols)
		if err != nil || !more {
			return r.emitted, err
		}
		ok, err := cu.pull(r, ks)
		if err != nil {
			return r.emitted, err
		}
		if ok {
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
	}
	return r.emitted, nil
}

// crow is a row held by collect.
type crow struct {
	cols [][]byte
	keys []keyVal
}

// slab hands out slices carved from large shared blocks, to hold many
// rows without an allocation each.
type slab[T any] struct{ block []T }

// take returns a zeroed slice of length n.
func (s *slab[T]) take(n int) []T {
	if n > cap(s.block)-len(s.block) {
		s.block = make([]T, 0, max(4096, n))
	}
	start := len(s.block)
	s.block = s.block[:start+n]
	return s.block[start : start+n : start+n]
}

// copy returns a copy of b.
func (s *slab[T]) copy(b []T) []T {
	c := s.take(len(b))
	copy(c, b)
	return c
}

// collect reads every row, then groups, removes duplicates, sorts and
// emits.
func (r *runner) collect(sources []Source) (int64, error) {
	var rows []*crow
	var (
		bytesSlab slab[byte]
		colsSlab  slab[[]byte]
		rowSlab   slab[crow]
	)
	for _, s := range sources {
		for {
			row, ok, err := s.Next()
			if err != nil {
				return 0, err
			}
			if !ok {
				break
			}
			if len(rows) >= r.maxRows {
				e := pgerr.Errorf(pgerr.ProgramLimitExceeded, "merging the shards' rows needs more than %d rows in memory", r.maxRows)
				e.Hint = "add the team key (team_id) so the statement runs on one shard, or narrow it with WHERE"
				return 0, e
			}
			cols, err := splitRow(bytesSlab.copy(row), r.n, colsSlab.take(r.n))
			if err != nil {
				return 0, err
			}
			cr := &rowSlab.take(1)[0]
			cr.cols = cols
			rows = append(rows, cr)
		}
	}
	types := r.shardTypes
	if r.p.agg {
		var err error
		if rows, err = r.combine(rows); err != nil {
			return 0, err
		}
		types = r.outTypes
	}
	if r.p.distinct {
		refs := make([]colRef, r.c)
		for i := range refs {
			refs[i] = colRef{slot: -1, pos: i}
		}
		ks, err := r.eqCols(refs, types, "compare")
		if err != nil {
			return 0, err
		}
		if rows, err = dedup(rows, ks); err != nil {
			return 0, err
		}
	}
	if len(r.p.order) > 0 {
		ks, err := r.sortCols(types)
		if err != nil {
			return 0, err
		}
		if err := sortRows(rows, ks); err != nil {
			return 0, err
		}
	}
	g, err := r.newGate(types)
	if err != nil {
		return 0, err
	}
	for _, row := range rows {
		more, err := g.take(nil, row.cols)
		if err != nil || !more {
			return r.emitted, err
		}
	}
	return r.emitted, nil
}

// sortRows stably sorts rows by ks.
func sortRows(rows []*crow, ks []keyCol) error {
	var keys slab[keyVal]
	for _, row := range rows {
		row.keys = keys.take(len(ks))
		if err := decodeKeys(row.cols, ks, row.keys); err != nil {
			return err
		}
	}
	slices.SortStableFunc(rows, func(a, b *crow) int { return cmpKeys(ks, a.keys, b.keys) })
	return nil
}

// dedup keeps the first of each set of rows equal on ks.
func dedup(rows []*crow, ks []keyCol) ([]*crow, error) {
	if err := sortRows(rows, ks); err != nil {
		return nil, err
	}
	out := rows[:0]
	for i, row := range rows {
		if i > 0 && cmpKeys(ks, rows[i-1].keys, row.keys) == 0 {
			continue
		}
		out = append(out, row)
	}
	return out, nil
}

// outTypes gives the merged rows' column types: avg's type for avg columns,
// the shards' otherwise; formats are the shards'.
func (r *runner) outTypes(col int) (uint32, int16) {
	oid, format := r.fs[col].typ, r.fs[col].format
	if col < len(r.p.slots) {
		if s := r.p.slots[col]; s.kind == slotAgg && s.agg == aggAvg {
			if t, err := avgType(oid); err == nil {
				oid = t
			}
		}
	}
	return oid, format
}
