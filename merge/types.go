package merge

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// Built-in type OIDs (pg_type.dat).
const (
	oidBool        = 16
	oidBytea       = 17
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidUnknown     = 705
	oidMoney       = 790
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

var typeNames = map[uint32]string{
	oidBool: "boolean", oidBytea: "bytea", oidName: "name", oidInt8: "bigint", oidInt2: "smallint",
	oidInt4: "integer", oidText: "text", oidOID: "oid", oidJSON: "json", oidFloat4: "real",
	oidFloat8: "double precision", oidUnknown: "unknown", oidMoney: "money", oidBpchar: "character",
	oidVarchar: "character varying", oidDate: "date", oidTime: "time without time zone",
	oidTimestamp: "timestamp without time zone", oidTimestamptz: "timestamp with time zone",
	oidInterval: "interval", oidNumeric: "numeric", oidUUID: "uuid", oidJSONB: "jsonb",
}

// class is how values of a type are decoded and compared.
type class uint8

const (
	clsInt      class = iota + 1 // value.i: integers, bool, oid, date, time, timestamps
	clsFloat                     // value.f with PostgreSQL's NaN rule
	clsBytes                     // value.b bytewise: C-collation text, uuid, bytea
	clsBpchar                    // value.b bytewise without trailing spaces
	clsNumeric                   // value.d
	clsInterval                  // value.i (high) and value.u (low): the 128-bit span
	clsJSONB                     // value.j
	clsEnum                      // value.f: pg_enum.enumsortorder
)

// value is one decoded non-NULL column value, ready to compare. Slices
// alias the row it came from.
type value struct {
	i int64
	u uint64
	f float64
	b []byte
	d *decimal
	j *jnode
}

// colType is how one result column's values are compared: its type, wire
// format and class.
type colType struct {
	oid    uint32
	format int16
	cls    class
	enum   map[string]float64
}

// newColType returns the comparison rules for a column of type oid sent in
// format, or a 0A000 error naming the type when the package cannot compare
// it exactly. what names the operation for the message ("sort", "group").
func newColType(oid uint32, format int16, opt *Options, what string) (*colType, error) {
	c := &colType{oid: oid, format: format}
	switch oid {
	case oidBool, oidInt2, oidInt4, oidInt8, oidOID, oidDate, oidTime, oidTimestamp, oidTimestamptz:
		c.cls = clsInt
	case oidFloat4, oidFloat8:
		c.cls = clsFloat
	case oidText, oidVarchar, oidName, oidUnknown, oidUUID, oidBytea:
		c.cls = clsBytes
	case oidBpchar:
		c.cls = clsBpchar
	case oidNumeric:
		c.cls = clsNumeric
	case oidInterval:
		c.cls = clsInterval
	case oidJSONB:
		c.cls = clsJSONB
	default:
		if opt != nil && opt.EnumOrder != nil {
			if m, ok := opt.EnumOrder(oid); ok {
				c.cls, c.enum = clsEnum, m
				return c, nil
			}
		}
		e := pgerr.Errorf(pgerr.FeatureNotSupported, "cannot %s values of type %s across shards", what, typeName(oid))
		e.Detail = "The sidecar merges the shards' rows itself and has no comparison for this type."
		e.Hint = "add the team key (team_id) so the statement runs on one shard, or cast the column to text"
		return nil, e
	}
	return c, nil
}

// decodeError reports a value the package could not read.
func (c *colType) decodeError(v []byte) error {
	form := "text"
	if c.format == 1 {
		form = "binary"
	}
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "cannot read %s value %q of type %s across shards", form, truncate(v), typeName(c.oid))
	switch c.oid {
	case oidDate, oidTimestamp, oidTimestamptz, oidTime:
		e.Hint = "merging shards' text date and time values needs DateStyle ISO"
	case oidInterval:
		e.Hint = "merging shards' text interval values needs IntervalStyle postgres"
	case oidBytea:
		e.Hint = "merging shards' text bytea values needs bytea_output hex"
	}
	return e
}

func truncate(v []byte) string {
	if len(v) > 40 {
		return string(v[:40]) + "..."
	}
	return string(v)
}

// decode reads a non-NULL value.
func (c *colType) decode(v []byte) (value, error) {
	var x value
	var err error
	bin := c.format == 1
	switch c.cls {
	case clsInt:
		x.i, err = c.decodeInt(v)
	case clsFloat:
		x.f, err = decodeFloat(c.oid, bin, v)
	case clsBytes:
		x.b, err = c.decodeBytes(v)
	case clsBpchar:
		x.b = bytes.TrimRight(v, " ")
	case clsNumeric:
		if bin {
			x.d, err = decodeNumericBinary(v)
		} else {
			x.d, err = parseDecimal(v)
		}
	case clsInterval:
		var iv interval
		iv, err = decodeInterval(bin, v)
		x.i, x.u = iv.span()
	case clsJSONB:
		if bin {
			if len(v) == 0 || v[0] != 1 {
				return x, c.decodeError(v)
			}
			v = v[1:]
		}
		x.j, err = parseJSON(v)
	case clsEnum:
		pos, ok := c.enum[string(v)]
		if !ok {
			e := pgerr.Errorf(pgerr.FeatureNotSupported, "enum label %q of type oid %d is unknown to the sidecar", truncate(v), c.oid)
			e.Hint = "the enum changed since the sidecar read pg_enum; retry after it refreshes"
			e.Retryable = true
			return x, e
		}
		x.f = pos
	}
	if err != nil {
		if _, ok := err.(*pgerr.Error); ok {
			return x, err
		}
		return x, c.decodeError(v)
	}
	return x, nil
}

func (c *colType) decodeInt(v []byte) (int64, error) {
	if c.format == 1 {
		switch c.oid {
		case oidBool:
			if len(v) == 1 {
				return int64(v[0]), nil
			}
		case oidInt2:
			if len(v) == 2 {
				return int64(int16(binary.BigEndian.Uint16(v))), nil
			}
		case oidInt4, oidDate:
			if len(v) == 4 {
				return int64(int32(binary.BigEndian.Uint32(v))), nil
			}
		case oidOID:
			if len(v) == 4 {
				return int64(binary.BigEndian.Uint32(v)), nil
			}
		case oidInt8, oidTime, oidTimestamp, oidTimestamptz:
			if len(v) == 8 {
				return int64(binary.BigEndian.Uint64(v)), nil
			}
		}
		return 0, errBadValue
	}
	switch c.oid {
	case oidBool:
		switch string(v) {
		case "t":
			return 1, nil
		case "f":
			return 0, nil
		}
		return 0, errBadValue
	case oidInt2, oidInt4, oidInt8, oidOID:
		return strconv.ParseInt(string(v), 10, 64)
	case oidDate:
		d, err := parseDateText(v)
		return int64(d), err
	case oidTime:
		return parseTimeText(v)
	case oidTimestamp:
		return parseTimestampText(v, false)
	case oidTimestamptz:
		return parseTimestampText(v, true)
	}
	return 0, errBadValue
}

func (c *colType) decodeBytes(v []byte) ([]byte, error) {
	switch c.oid {
	case oidUUID:
		if c.format == 1 {
			if len(v) != 16 {
				return nil, errBadValue
			}
			return v, nil
		}
		return parseUUID(v)
	case oidBytea:
		if c.format == 1 {
			return v, nil
		}
		if len(v) < 2 || v[0] != '\\' || v[1] != 'x' || len(v)%2 != 0 {
			return nil, errBadValue
		}
		out := make([]byte, (len(v)-2)/2)
		if _, err := hex.Decode(out, v[2:]); err != nil {
			return nil, errBadValue
		}
		return out, nil
	}
	return v, nil
}

// parseUUID reads uuid_out's text (and the other forms uuid_in accepts:
// upper case, braces, hyphens after any group of four digits).
func parseUUID(v []byte) ([]byte, error) {
	if len(v) >= 2 && v[0] == '{' && v[len(v)-1] == '}' {
		v = v[1 : len(v)-1]
	}
	out := make([]byte, 0, 16)
	var hi byte
	half := false
	for _, ch := range v {
		var n byte
		switch {
		case ch >= '0' && ch <= '9':
			n = ch - '0'
		case ch >= 'a' && ch <= 'f':
			n = ch - 'a' + 10
		case ch >= 'A' && ch <= 'F':
			n = ch - 'A' + 10
		case ch == '-' && !half:
			continue
		default:
			return nil, errBadValue
		}
		if half {
			out = append(out, hi<<4|n)
		} else {
			hi = n
		}
		half = !half
	}
	if len(out) != 16 || half {
		return nil, errBadValue
	}
	return out, nil
}

// decodeFloat reads float4/float8 in either format.
func decodeFloat(oid uint32, bin bool, v []byte) (float64, error) {
	if bin {
		switch {
		case oid == oidFloat4 && len(v) == 4:
			return float64(math.Float32frombits(binary.BigEndian.Uint32(v))), nil
		case oid == oidFloat8 && len(v) == 8:
			return math.Float64frombits(binary.BigEndian.Uint64(v)), nil
		}
		return 0, errBadValue
	}
	bits := 64
	if oid == oidFloat4 {
		bits = 32
	}
	f, err := strconv.ParseFloat(string(v), bits)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return f, nil
		}
		return 0, errBadValue
	}
	return f, nil
}

// compare orders two non-NULL values of the column's type as PostgreSQL's
// default btree operator class does.
func (c *colType) compare(a, b *value) int {
	switch c.cls {
	case clsInt:
		return cmpInt(a.i, b.i)
	case clsFloat, clsEnum:
		return cmpFloat(a.f, b.f)
	case clsBytes, clsBpchar:
		return bytes.Compare(a.b, b.b)
	case clsNumeric:
		return cmpDecimal(a.d, b.d)
	case clsInterval:
		if a.i != b.i {
			return cmpInt(a.i, b.i)
		}
		return cmpInt(a.u, b.u)
	case clsJSONB:
		return cmpJSONB(a.j, b.j)
	}
	return 0
}

// cmpFloat is float8_cmp_internal: NaNs are equal to each other and above
// every other value; -0 equals 0.
func cmpFloat(a, b float64) int {
	an, bn := math.IsNaN(a), math.IsNaN(b)
	switch {
	case an && bn:
		return 0
	case an:
		return 1
	case bn:
		return -1
	}
	return cmpInt(a, b)
}
