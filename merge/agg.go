package merge

import (
	"encoding/binary"
	"math"
	"math/big"
	"strconv"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// combine groups the shards' partial rows by the grouping columns and
// folds each group into one row: aggregates are combined, other columns
// take the group's first value. A query with aggregates and no GROUP BY
// yields exactly one row, as on one server.
func (r *runner) combine(rows []*crow) ([]*crow, error) {
	p := r.p
	ks, err := r.eqCols(p.group, r.shardTypes, "group")
	if err != nil {
		return nil, err
	}
	if len(ks) > 0 {
		if err := sortRows(rows, ks); err != nil {
			return nil, err
		}
	}
	aggs, err := r.aggregators()
	if err != nil {
		return nil, err
	}
	var out []*crow
	for start := 0; start < len(rows); {
		end := start + 1
		for end < len(rows) && (len(ks) == 0 || cmpKeys(ks, rows[start].keys, rows[end].keys) == 0) {
			end++
		}
		row, err := r.fold(rows[start:end], aggs)
		if err != nil {
			return nil, err
		}
		out = append(out, row)
		start = end
	}
	if len(out) == 0 && len(p.group) == 0 {
		row, err := r.fold(nil, aggs)
		if err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, nil
}

// aggregator combines one aggregate column.
type aggregator struct {
	col   int
	kind  aggKind
	in    *colType // the partial values' type (for min and max: compared)
	count int      // avg: its count column
	out   uint32   // result type
}

func (r *runner) aggregators() ([]aggregator, error) {
	var out []aggregator
	for i, s := range r.p.slots {
		if s.kind != slotAgg {
			continue
		}
		a := aggregator{col: i, kind: s.agg, count: s.count, out: r.fs[i].typ}
		t := &colType{oid: r.fs[i].typ, format: r.fs[i].format}
		var err error
		switch s.agg {
		case aggMin, aggMax:
			t, err = newColType(r.fs[i].typ, r.fs[i].format, &r.opt, "compare")
		case aggAvg:
			a.out, err = avgType(r.fs[i].typ)
		case aggSum:
			err = checkSumType(r.fs[i].typ)
		}
		if err != nil {
			return nil, err
		}
		a.in = t
		out = append(out, a)
	}
	return out, nil
}

func checkSumType(oid uint32) error {
	switch oid {
	case oidInt8, oidNumeric, oidFloat4, oidFloat8, oidInterval:
		return nil
	}
	return pgerr.Errorf(pgerr.FeatureNotSupported, "cannot merge sum of %s across shards", typeName(oid)).WithHint(hintOneShard)
}

// fold combines one group's partial rows (none for an empty scalar
// aggregate).
func (r *runner) fold(group []*crow, aggs []aggregator) (*crow, error) {
	cols := make([][]byte, r.n)
	if len(group) > 0 {
		copy(cols, group[0].cols)
	}
	for _, a := range aggs {
		v, err := r.foldAgg(a, group)
		if err != nil {
			return nil, err
		}
		cols[a.col] = v
	}
	return &crow{cols: cols}, nil
}

// foldAgg combines one aggregate over a group's partial values and
// returns the encoded result (nil for NULL).
func (r *runner) foldAgg(a aggregator, group []*crow) ([]byte, error) {
	bin := a.in.format == 1
	switch a.kind {
	case aggCount:
		var total int64
		for _, row := range group {
			n, err := readInt8(row.cols[a.col], bin)
			if err != nil {
				return nil, a.in.decodeError(row.cols[a.col])
			}
			total += n
		}
		return appendInt8(nil, total, bin), nil
	case aggSum:
		s, err := sumValues(a.in, a.col, group)
		if err != nil || s == nil {
			return nil, err
		}
		return s.encode(a.in.oid, bin), nil
	case aggAvg:
		s, err := sumValues(a.in, a.col, group)
		if err != nil || s == nil {
			return nil, err
		}
		var n int64
		for _, row := range group {
			v := row.cols[a.count]
			c, err := readInt8(v, r.fs[a.count].format == 1)
			if err != nil {
				return nil, pgerr.Errorf(pgerr.ProtocolViolation, "merge: bad count %q", truncate(v))
			}
			n += c
		}
		if n == 0 {
			return nil, nil
		}
		return s.avg(n).encode(a.out, bin), nil
	case aggMin, aggMax:
		var best []byte
		var bestV value
		for _, row := range group {
			v := row.cols[a.col]
			if v == nil {
				continue
			}
			x, err := a.in.decode(v)
			if err != nil {
				return nil, err
			}
			if best == nil {
				best, bestV = v, x
				continue
			}
			c := a.in.compare(&x, &bestV)
			if a.kind == aggMin && c < 0 || a.kind == aggMax && c > 0 {
				best, bestV = v, x
			}
		}
		return best, nil
	case aggBoolAnd, aggBoolOr:
		seen, acc := false, a.kind == aggBoolAnd
		bt := &colType{oid: oidBool, format: a.in.format, cls: clsInt}
		for _, row := range group {
			v := row.cols[a.col]
			if v == nil {
				continue
			}
			x, err := bt.decode(v)
			if err != nil {
				return nil, err
			}
			seen = true
			if a.kind == aggBoolAnd {
				acc = acc && x.i != 0
			} else {
				acc = acc || x.i != 0
			}
		}
		if !seen {
			return nil, nil
		}
		return appendBool(nil, acc, bin), nil
	}
	return nil, pgerr.Errorf(pgerr.InternalError, "merge: unknown aggregate %d", a.kind)
}

// sum is a running sum of one of sum's result types.
type sum struct {
	oid uint32
	i   big.Int // int8: exact, checked against int8's range at the end
	d   *decimal
	f   float64
	f32 float32
	iv  interval
}

// sumValues adds a group's non-NULL partial sums, or returns nil when all
// are NULL.
func sumValues(t *colType, col int, group []*crow) (*sum, error) {
	var s *sum
	bin := t.format == 1
	for _, row := range group {
		v := row.cols[col]
		if v == nil {
			continue
		}
		if s == nil {
			s = &sum{oid: t.oid}
			if t.oid == oidNumeric {
				s.d = &decimal{}
			}
		}
		switch t.oid {
		case oidInt8:
			n, err := readInt8(v, bin)
			if err != nil {
				return nil, t.decodeError(v)
			}
			s.i.Add(&s.i, big.NewInt(n))
		case oidNumeric:
			var d *decimal
			var err error
			if bin {
				d, err = decodeNumericBinary(v)
			} else {
				d, err = parseDecimal(v)
			}
			if err != nil {
				return nil, t.decodeError(v)
			}
			s.d = addDecimal(s.d, d)
		case oidFloat4, oidFloat8:
			f, err := decodeFloat(t.oid, bin, v)
			if err != nil {
				return nil, t.decodeError(v)
			}
			if t.oid == oidFloat4 {
				s.f32 += float32(f)
			} else {
				s.f += f
			}
		case oidInterval:
			iv, err := decodeInterval(bin, v)
			if err != nil {
				return nil, t.decodeError(v)
			}
			if s.iv, err = addInterval(s.iv, iv); err != nil {
				return nil, pgerr.Errorf(codeOutOfRange, "interval out of range")
			}
		default:
			return nil, checkSumType(t.oid)
		}
	}
	if s != nil && s.oid == oidInt8 && !s.i.IsInt64() {
		return nil, pgerr.Errorf(codeOutOfRange, "bigint out of range")
	}
	return s, nil
}

// avgResult is a finished avg: numeric, float8 or interval.
type avgResult struct {
	d  *decimal
	f  float64
	iv interval
}

// avg divides the sum by the row count as int8_avg, numeric_avg,
// float8_avg and interval_avg do.
func (s *sum) avg(n int64) avgResult {
	switch s.oid {
	case oidInt8:
		return avgResult{d: divDecimal(decimalFromInt(&s.i), n)}
	case oidNumeric:
		return avgResult{d: divDecimal(s.d, n)}
	case oidFloat4:
		return avgResult{f: float64(s.f32) / float64(n)}
	case oidFloat8:
		return avgResult{f: s.f / float64(n)}
	default:
		return avgResult{iv: divInterval(s.iv, float64(n))}
	}
}

func (s *sum) encode(oid uint32, bin bool) []byte {
	switch oid {
	case oidInt8:
		return appendInt8(nil, s.i.Int64(), bin)
	case oidNumeric:
		return encodeDecimal(s.d, bin)
	case oidFloat4:
		return appendFloat(nil, float64(s.f32), 32, bin)
	case oidFloat8:
		return appendFloat(nil, s.f, 64, bin)
	default:
		return encodeInterval(s.iv, bin)
	}
}

func (a avgResult) encode(oid uint32, bin bool) []byte {
	switch oid {
	case oidNumeric:
		return encodeDecimal(a.d, bin)
	case oidFloat8:
		return appendFloat(nil, a.f, 64, bin)
	default:
		return encodeInterval(a.iv, bin)
	}
}

func encodeDecimal(d *decimal, bin bool) []byte {
	if bin {
		return d.appendBinary(nil)
	}
	return d.appendText(nil)
}

func encodeInterval(iv interval, bin bool) []byte {
	if bin {
		return iv.appendBinary(nil)
	}
	return iv.appendText(nil)
}

// readInt8 reads a bigint.
func readInt8(v []byte, bin bool) (int64, error) {
	if bin {
		if len(v) != 8 {
			return 0, errBadValue
		}
		return int64(binary.BigEndian.Uint64(v)), nil
	}
	return strconv.ParseInt(string(v), 10, 64)
}

func appendInt8(dst []byte, n int64, bin bool) []byte {
	if bin {
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return strconv.AppendInt(dst, n, 10)
}

func appendBool(dst []byte, b, bin bool) []byte {
	switch {
	case bin && b:
		return append(dst, 1)
	case bin:
		return append(dst, 0)
	case b:
		return append(dst, 't')
	}
	return append(dst, 'f')
}

// appendFloat appends float4out's or float8out's text (shortest exact
// digits, as with extra_float_digits 1, the default) or the binary form.
func appendFloat(dst []byte, f float64, bits int, bin bool) []byte {
	if bin {
		if bits == 32 {
			return binary.BigEndian.AppendUint32(dst, math.Float32bits(float32(f)))
		}
		return binary.BigEndian.AppendUint64(dst, math.Float64bits(f))
	}
	switch {
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	}
	e := strconv.AppendFloat(nil, f, 'e', -1, bits)
	exp := 0
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] == 'e' {
			exp, _ = strconv.Atoi(string(e[i+1:]))
			break
		}
	}
	limit := 15 // DBL_DIG
	if bits == 32 {
		limit = 6 // FLT_DIG
	}
	if exp >= -4 && exp < limit {
		return strconv.AppendFloat(dst, f, 'f', -1, bits)
	}
	return append(dst, e...)
}
