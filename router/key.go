package router

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// SQLSTATEs the router returns that internal/pgerr has no name for yet.
const (
	// CodeInvalidTextRepresentation (22P02): a team key that is not a valid
	// value of the map's key type (literal, Bind parameter or hint).
	CodeInvalidTextRepresentation pgerr.Code = "22P02"
	// CodeNumericOutOfRange (22003): an integer key outside its type.
	CodeNumericOutOfRange pgerr.Code = "22003"
	// CodeInsufficientPrivilege (42501): the tenant guard refused a
	// statement naming another team than the session's brownie.team_id.
	CodeInsufficientPrivilege pgerr.Code = "42501"
	// CodeSyntaxError (42601): the statement does not parse.
	CodeSyntaxError pgerr.Code = "42601"
)

// KeyType is the PostgreSQL type of the routing key (team_id) of every
// sharded table in a Map. It selects the hash function, exactly as a
// PARTITION BY HASH column of that type would.
type KeyType uint8

// Key types. The zero value is KeyUUID, Brownie's team_id type.
const (
	// KeyUUID hashes the 16 bytes of the uuid (uuid_hash_extended).
	KeyUUID KeyType = iota
	// KeyBigint hashes with hashint8extended; int2 and int4 columns holding
	// the same values place identically.
	KeyBigint
	// KeyText hashes the bytes of the string (hashtextextended with a
	// deterministic collation); varchar columns place identically.
	KeyText
)

// String returns the shard-map spelling of t: uuid, bigint or text.
func (t KeyType) String() string {
	switch t {
	case KeyUUID:
		return "uuid"
	case KeyBigint:
		return "bigint"
	case KeyText:
		return "text"
	}
	return "KeyType(" + strconv.Itoa(int(t)) + ")"
}

// ParseKeyType parses a shard-map key type: uuid, bigint (or int8) or text.
func ParseKeyType(s string) (KeyType, error) {
	switch strings.ToLower(s) {
	case "uuid":
		return KeyUUID, nil
	case "bigint", "int8":
		return KeyBigint, nil
	case "text":
		return KeyText, nil
	}
	return 0, fmt.Errorf("key type %q: must be uuid, bigint or text", s)
}

// Key is one routing-key value (a team id) of a given KeyType. Keys are
// small comparable values: two keys are == exactly when PostgreSQL would
// find them equal (uuid spellings, integer widths and formats are
// normalised). The zero Key is not a valid key.
type Key struct {
	t KeyType
	s string // uuid: the 16 bytes; text: the string
	n int64  // bigint
}

// UUIDKey returns the uuid key with bytes u.
func UUIDKey(u [16]byte) Key { return Key{t: KeyUUID, s: string(u[:])} }

// BigintKey returns the bigint key n.
func BigintKey(n int64) Key { return Key{t: KeyBigint, n: n} }

// TextKey returns the text key s.
func TextKey(s string) Key { return Key{t: KeyText, s: s} }

// ParseKey parses s as PostgreSQL's input function for type t would: any
// uuid spelling uuid_in accepts, an integer as int8in does (surrounding
// whitespace, sign; PostgreSQL 16 prefixes and underscores), or any text.
// Errors are *pgerr.Error with SQLSTATE 22P02 (or 22003 out of range).
func ParseKey(t KeyType, s string) (Key, error) {
	switch t {
	case KeyUUID:
		u, err := parseUUID(s)
		if err != nil {
			return Key{}, err
		}
		return UUIDKey(u), nil
	case KeyBigint:
		n, err := parseInt(s, 64, "bigint")
		if err != nil {
			return Key{}, err
		}
		return BigintKey(n), nil
	case KeyText:
		return TextKey(s), nil
	}
	return Key{}, fmt.Errorf("router: unknown key type %d", t)
}

// Type returns the key's type.
func (k Key) Type() KeyType { return k.t }

// IsZero reports whether k is the zero Key (no key).
func (k Key) IsZero() bool { return k == Key{} }

// String returns the canonical text form: a lower-case hyphenated uuid, a
// decimal integer or the text itself.
func (k Key) String() string {
	switch k.t {
	case KeyBigint:
		return strconv.FormatInt(k.n, 10)
	case KeyText:
		return k.s
	}
	if len(k.s) != 16 {
		return ""
	}
	return formatUUID(k.s)
}

// Hash returns PostgreSQL's partition hash of k:
// hash_combine64(0, <type>_hash_extended(k, HASH_PARTITION_SEED)), the row
// hash that compute_partition_hash_value gives a one-column hash partition
// key of k's type.
func (k Key) Hash() uint64 {
	var h uint64
	if k.t == KeyBigint {
		h = hashInt8Extended(k.n, hashPartitionSeed)
	} else {
		h = hashBytesExtended(k.s, hashPartitionSeed)
	}
	return hashCombine64(0, h)
}

// ShardIndex returns the hash placement of k among n shards: k.Hash() % n,
// which is the REMAINDER of the PARTITION BY HASH (MODULUS n) partition
// PostgreSQL puts k in. Overrides are not considered (see Router.Place).
func ShardIndex(k Key, n int) int {
	if n <= 0 {
		return 0
	}
	return int(k.Hash() % uint64(n))
}

func formatUUID(b string) string {
	var out [36]byte
	hex.Encode(out[0:8], []byte(b[0:4]))
	out[8] = '-'
	hex.Encode(out[9:13], []byte(b[4:6]))
	out[13] = '-'
	hex.Encode(out[14:18], []byte(b[6:8]))
	out[18] = '-'
	hex.Encode(out[19:23], []byte(b[8:10]))
	out[23] = '-'
	hex.Encode(out[24:36], []byte(b[10:16]))
	return string(out[:])
}

// invalidInput is PostgreSQL's message for a value its input function
// rejects.
func invalidInput(typ, s string) *pgerr.Error {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return pgerr.Errorf(CodeInvalidTextRepresentation, "invalid input syntax for type %s: %q", typ, s)
}

// parseUUID accepts what PostgreSQL's uuid_in accepts: 32 hex digits, a
// hyphen allowed after any group of four, optionally in braces.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	src := s
	braces := false
	if strings.HasPrefix(src, "{") {
		src = src[1:]
		braces = true
	}
	for i := 0; i < 16; i++ {
		if len(src) < 2 {
			return u, invalidInput("uuid", s)
		}
		hi, ok1 := unhex(src[0])
		lo, ok2 := unhex(src[1])
		if !ok1 || !ok2 {
			return u, invalidInput("uuid", s)
		}
		u[i] = hi<<4 | lo
		src = src[2:]
		if len(src) > 0 && src[0] == '-' && i%2 == 1 && i < 15 {
			src = src[1:]
		}
	}
	if braces {
		if !strings.HasPrefix(src, "}") {
			return u, invalidInput("uuid", s)
		}
		src = src[1:]
	}
	if src != "" {
		return u, invalidInput("uuid", s)
	}
	return u, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isPGSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// parseInt parses an integer of the given bit size as PostgreSQL's int2in,
// int4in and int8in do: surrounding whitespace, an optional sign, decimal
// digits, and (PostgreSQL 16) 0x/0o/0b prefixes and underscores between
// digits.
func parseInt(s string, bitSize int, typ string) (int64, error) {
	t := s
	for len(t) > 0 && isPGSpace(t[0]) {
		t = t[1:]
	}
	for len(t) > 0 && isPGSpace(t[len(t)-1]) {
		t = t[:len(t)-1]
	}
	neg := false
	if len(t) > 0 && (t[0] == '+' || t[0] == '-') {
		neg = t[0] == '-'
		t = t[1:]
	}
	base := uint64(10)
	if len(t) > 2 && t[0] == '0' {
		switch t[1] {
		case 'x', 'X':
			base, t = 16, t[2:]
		case 'o', 'O':
			base, t = 8, t[2:]
		case 'b', 'B':
			base, t = 2, t[2:]
		}
	}
	if t == "" {
		return 0, invalidInput(typ, s)
	}
	limit := uint64(1) << (bitSize - 1) // magnitude of the minimum value
	var v uint64
	digits := 0
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c == '_' {
			// An underscore must sit between digits (or after a prefix).
			if i+1 >= len(t) || (digits == 0 && base == 10) {
				return 0, invalidInput(typ, s)
			}
			if _, ok := digitVal(t[i+1], base); !ok {
				return 0, invalidInput(typ, s)
			}
			continue
		}
		d, ok := digitVal(c, base)
		if !ok {
			return 0, invalidInput(typ, s)
		}
		digits++
		if v > (limit-d)/base { // v*base + d > limit
			return 0, outOfRange(typ, s)
		}
		v = v*base + d
	}
	if !neg && v == limit {
		return 0, outOfRange(typ, s)
	}
	if neg {
		return int64(-v), nil
	}
	return int64(v), nil
}

func digitVal(c byte, base uint64) (uint64, bool) {
	d, ok := unhex(c)
	if !ok || uint64(d) >= base {
		return 0, false
	}
	return uint64(d), true
}

func outOfRange(typ, s string) *pgerr.Error {
	return pgerr.Errorf(CodeNumericOutOfRange, "value %q is out of range for type %s", s, typ)
}

// PostgreSQL type OIDs the router reads parameters of.
const (
	oidInt8         uint32 = 20
	oidInt2         uint32 = 21
	oidInt4         uint32 = 23
	oidText         uint32 = 25
	oidOid          uint32 = 26
	oidName         uint32 = 19
	oidUnknown      uint32 = 705
	oidBpchar       uint32 = 1042
	oidVarchar      uint32 = 1043
	oidUUID         uint32 = 2950
	oidInt2Array    uint32 = 1005
	oidInt4Array    uint32 = 1007
	oidTextArray    uint32 = 1009
	oidBpcharArray  uint32 = 1014
	oidVarcharArray uint32 = 1015
	oidInt8Array    uint32 = 1016
	oidNameArray    uint32 = 1003
	oidUUIDArray    uint32 = 2951
)

// keyOID is the OID of t's scalar type: the type PostgreSQL infers for a
// parameter compared with the key column.
func keyOID(t KeyType) uint32 {
	switch t {
	case KeyBigint:
		return oidInt8
	case KeyText:
		return oidText
	}
	return oidUUID
}

// elemOID returns the element type of array type oid, or 0.
func elemOID(oid uint32) uint32 {
	switch oid {
	case oidInt2Array:
		return oidInt2
	case oidInt4Array:
		return oidInt4
	case oidInt8Array:
		return oidInt8
	case oidTextArray:
		return oidText
	case oidBpcharArray:
		return oidBpchar
	case oidVarcharArray:
		return oidVarchar
	case oidNameArray:
		return oidName
	case oidUUIDArray:
		return oidUUID
	}
	return 0
}

// arrayOID returns the array type of scalar type oid, or 0.
func arrayOID(oid uint32) uint32 {
	for _, a := range []uint32{oidInt2Array, oidInt4Array, oidInt8Array, oidTextArray, oidBpcharArray, oidVarcharArray, oidNameArray, oidUUIDArray} {
		if elemOID(a) == oid {
			return a
		}
	}
	return 0
}

// typeOIDByName maps the last component of a cast's type name (as the
// parser spells it: uuid, int4, pg_catalog.int8...) to an OID the router
// can decode, or 0.
func typeOIDByName(name string) uint32 {
	switch name {
	case "uuid":
		return oidUUID
	case "int2", "smallint":
		return oidInt2
	case "int4", "integer", "int":
		return oidInt4
	case "int8", "bigint":
		return oidInt8
	case "text":
		return oidText
	case "varchar":
		return oidVarchar
	case "bpchar":
		return oidBpchar
	case "name":
		return oidName
	case "oid":
		return oidOid
	}
	return 0
}

type valueClass uint8

const (
	classOther valueClass = iota
	classUUID
	classInt
	classText
)

func classOf(oid uint32) (valueClass, int) {
	switch oid {
	case oidUUID:
		return classUUID, 16
	case oidInt2:
		return classInt, 2
	case oidInt4, oidOid:
		return classInt, 4
	case oidInt8:
		return classInt, 8
	case oidText, oidVarchar, oidBpchar, oidName, oidUnknown:
		return classText, 0
	}
	return classOther, 0
}

// decodeKey converts one wire value (a Bind parameter or an array element)
// of type oid, in text or binary format, to a key of type t, applying the
// conversion PostgreSQL would need to compare it with the key column.
func decodeKey(raw []byte, binaryFormat bool, oid uint32, t KeyType) (Key, error) {
	class, size := classOf(oid)
	var (
		u    [16]byte
		n    int64
		text string
	)
	switch class {
	case classOther:
		return Key{}, pgerr.Errorf(CodeInvalidTextRepresentation, "a value of type oid %d cannot be a %s team key", oid, t)
	case classUUID:
		if binaryFormat {
			if len(raw) != 16 {
				return Key{}, pgerr.Errorf(CodeInvalidTextRepresentation, "binary uuid value has %d bytes, want 16", len(raw))
			}
			copy(u[:], raw)
		} else {
			var err error
			if u, err = parseUUID(string(raw)); err != nil {
				return Key{}, err
			}
		}
	case classInt:
		if binaryFormat {
			if len(raw) != size {
				return Key{}, pgerr.Errorf(CodeInvalidTextRepresentation, "binary integer value has %d bytes, want %d", len(raw), size)
			}
			switch size {
			case 2:
				n = int64(int16(binary.BigEndian.Uint16(raw)))
			case 4:
				if oid == oidOid {
					n = int64(binary.BigEndian.Uint32(raw))
				} else {
					n = int64(int32(binary.BigEndian.Uint32(raw)))
				}
			default:
				n = int64(binary.BigEndian.Uint64(raw))
			}
		} else {
			var err error
			if n, err = parseInt(string(raw), size*8, intTypeName(size)); err != nil {
				return Key{}, err
			}
		}
	case classText:
		text = string(raw)
	}
	switch t {
	case KeyUUID:
		switch class {
		case classUUID:
			return UUIDKey(u), nil
		case classText:
			return ParseKey(KeyUUID, text)
		}
	case KeyBigint:
		switch class {
		case classInt:
			return BigintKey(n), nil
		case classText:
			return ParseKey(KeyBigint, text)
		}
	case KeyText:
		switch class {
		case classText:
			return TextKey(text), nil
		case classUUID:
			return TextKey(formatUUID(string(u[:]))), nil
		case classInt:
			return TextKey(strconv.FormatInt(n, 10)), nil
		}
	}
	return Key{}, pgerr.Errorf(CodeInvalidTextRepresentation, "a %s value cannot be a %s team key", className(class), t)
}

func intTypeName(size int) string {
	switch size {
	case 2:
		return "smallint"
	case 4:
		return "integer"
	}
	return "bigint"
}

func className(c valueClass) string {
	switch c {
	case classUUID:
		return "uuid"
	case classInt:
		return "integer"
	case classText:
		return "text"
	}
	return "non-key"
}

// arrayElem is one element of a decoded array.
type arrayElem struct {
	raw  []byte
	null bool
}

// maxArrayElems bounds the elements the router reads from one array value
// (an ANY($1) parameter or literal); larger arrays are not used for
// routing: the statement is treated as having no key.
const maxArrayElems = 100_000

// errArrayTooLarge reports an array over maxArrayElems; it never reaches
// clients.
var errArrayTooLarge = errors.New("array too large to route by")

// parseArrayText splits PostgreSQL's text array format ({a,"b c",NULL},
// nested braces for more dimensions, an optional [l:u]= prefix) into its
// elements, flattening dimensions.
func parseArrayText(s string) ([]arrayElem, error) {
	bad := func() error { return invalidInput("array", s) }
	i := 0
	skipSpace := func() {
		for i < len(s) && isPGSpace(s[i]) {
			i++
		}
	}
	skipSpace()
	if i < len(s) && s[i] == '[' {
		// Dimension decoration: [l:u][l:u]...=
		for i < len(s) && s[i] == '[' {
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return nil, bad()
			}
			i += j + 1
		}
		skipSpace()
		if i >= len(s) || s[i] != '=' {
			return nil, bad()
		}
		i++
		skipSpace()
	}
	if i >= len(s) || s[i] != '{' {
		return nil, bad()
	}
	var out []arrayElem
	depth := 0
	expectElem := true
	for i < len(s) {
		c := s[i]
		switch {
		case c == '{':
			depth++
			i++
			expectElem = true
		case c == '}':
			depth--
			i++
			expectElem = false
			if depth == 0 {
				skipSpace()
				if i != len(s) {
					return nil, bad()
				}
				return out, nil
			}
		case c == ',':
			i++
			expectElem = true
		case isPGSpace(c):
			i++
		case c == '"':
			if !expectElem {
				return nil, bad()
			}
			i++
			var b []byte
			for {
				if i >= len(s) {
					return nil, bad()
				}
				if s[i] == '\\' && i+1 < len(s) {
					b = append(b, s[i+1])
					i += 2
					continue
				}
				if s[i] == '"' {
					i++
					break
				}
				b = append(b, s[i])
				i++
			}
			if b == nil {
				b = []byte{}
			}
			out = append(out, arrayElem{raw: b})
			expectElem = false
		default:
			if !expectElem || depth == 0 {
				return nil, bad()
			}
			var b []byte
			lastNonSpace := 0
			for i < len(s) && s[i] != ',' && s[i] != '}' && s[i] != '{' && s[i] != '"' {
				if s[i] == '\\' && i+1 < len(s) {
					b = append(b, s[i+1])
					i += 2
					lastNonSpace = len(b)
					continue
				}
				b = append(b, s[i])
				if !isPGSpace(s[i]) {
					lastNonSpace = len(b)
				}
				i++
			}
			b = b[:lastNonSpace]
			if strings.EqualFold(string(b), "null") {
				out = append(out, arrayElem{null: true})
			} else {
				out = append(out, arrayElem{raw: b})
			}
			expectElem = false
		}
		if len(out) > maxArrayElems {
			return nil, errArrayTooLarge
		}
	}
	return nil, bad()
}

// parseArrayBinary decodes PostgreSQL's binary array format (array_send):
// dimensions, flags, element type, bounds, then length-prefixed elements.
// It returns the element type OID and the elements, flattened.
func parseArrayBinary(p []byte) (uint32, []arrayElem, error) {
	bad := func(why string) error {
		return pgerr.Errorf(CodeInvalidTextRepresentation, "malformed binary array: %s", why)
	}
	if len(p) < 12 {
		return 0, nil, bad("short header")
	}
	ndim := int32(binary.BigEndian.Uint32(p[0:4]))
	elem := binary.BigEndian.Uint32(p[8:12])
	p = p[12:]
	if ndim < 0 || ndim > 6 {
		return 0, nil, bad("invalid number of dimensions")
	}
	if ndim == 0 {
		return elem, nil, nil
	}
	if len(p) < int(ndim)*8 {
		return 0, nil, bad("short dimensions")
	}
	total := int64(1)
	for d := 0; d < int(ndim); d++ {
		n := int32(binary.BigEndian.Uint32(p[d*8:]))
		if n < 0 {
			return 0, nil, bad("negative dimension")
		}
		total *= int64(n)
		if total > maxArrayElems {
			return 0, nil, errArrayTooLarge
		}
	}
	p = p[int(ndim)*8:]
	out := make([]arrayElem, 0, total)
	for k := int64(0); k < total; k++ {
		if len(p) < 4 {
			return 0, nil, bad("short element")
		}
		n := int32(binary.BigEndian.Uint32(p))
		p = p[4:]
		if n == -1 {
			out = append(out, arrayElem{null: true})
			continue
		}
		if n < 0 || int(n) > len(p) {
			return 0, nil, bad("element length")
		}
		out = append(out, arrayElem{raw: p[:n]})
		p = p[n:]
	}
	if len(p) != 0 {
		return 0, nil, bad("trailing bytes")
	}
	return elem, out, nil
}
