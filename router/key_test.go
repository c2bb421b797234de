package router

import (
	"math"
	"slices"
	"strconv"
	"testing"
)

func TestParseKeyAcceptsWhatPostgresAccepts(t *testing.T) {
	const canon = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
	for _, s := range []string{
		canon,
		"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
		"a0eebc999c0b4ef8bb6d6bb9bd380a11",
		"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
		"{a0eebc99c0b4ef8bb6d6bb9bd380a11}"[:0] + "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
	} {
		k, err := ParseKey(KeyUUID, s)
		if err != nil {
			t.Errorf("%q: %v", s, err)
			continue
		}
		if k.String() != canon {
			t.Errorf("%q → %s", s, k)
		}
	}
	for _, s := range []string{"", "a0eebc99", canon + "0", "{" + canon, canon + "}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g", "-a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", " " + canon} {
		if _, err := ParseKey(KeyUUID, s); pgCode(err) != CodeInvalidTextRepresentation {
			t.Errorf("%q: err = %v, want 22P02", s, err)
		}
	}

	ints := map[string]int64{
		"42": 42, " -42 ": -42, "+7": 7, "9223372036854775807": math.MaxInt64, "-9223372036854775808": math.MinInt64,
		"0x1F": 31, "0o17": 15, "0b101": 5, "1_000": 1000, "007": 7,
	}
	for s, want := range ints {
		k, err := ParseKey(KeyBigint, s)
		if err != nil || k != BigintKey(want) {
			t.Errorf("%q: %v %v, want %d", s, k, err, want)
		}
	}
	for s, code := range map[string]string{"": "22P02", "4 2": "22P02", "1_": "22P02", "_1": "22P02", "1.5": "22P02", "0x": "22P02",
		"9223372036854775808": "22003", "-9223372036854775809": "22003", "99999999999999999999999": "22003"} {
		if _, err := ParseKey(KeyBigint, s); string(pgCode(err)) != code {
			t.Errorf("%q: err = %v, want %s", s, err, code)
		}
	}
	if _, err := parseInt("32768", 16, "smallint"); pgCode(err) != CodeNumericOutOfRange {
		t.Errorf("smallint 32768: %v", err)
	}
	if n, err := parseInt("-32768", 16, "smallint"); err != nil || n != -32768 {
		t.Errorf("smallint -32768: %d %v", n, err)
	}
	if k, err := ParseKey(KeyText, " Team 42 "); err != nil || k.String() != " Team 42 " {
		t.Errorf("text: %v %v", k, err)
	}
}

func TestKeysCompareByValue(t *testing.T) {
	a, _ := ParseKey(KeyUUID, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")
	b, _ := ParseKey(KeyUUID, "a0eebc999c0b4ef8bb6d6bb9bd380a11")
	if a != b {
		t.Error("two spellings of one uuid differ")
	}
	if BigintKey(1) == TextKey("1") {
		t.Error("keys of different types are equal")
	}
	if !(Key{}).IsZero() || a.IsZero() {
		t.Error("IsZero")
	}
}

func TestDecodeKeyReadsTextAndBinaryParameters(t *testing.T) {
	u := "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
	ub := uuidBin(t, u)
	cases := []struct {
		name string
		raw  []byte
		bin  bool
		oid  uint32
		kt   KeyType
		want string
	}{
		{"uuid text", txt(u), false, oidUUID, KeyUUID, u},
		{"uuid binary", ub, true, oidUUID, KeyUUID, u},
		{"unknown-typed text to uuid", txt(u), false, oidUnknown, KeyUUID, u},
		{"varchar binary to uuid", txt(u), true, oidVarchar, KeyUUID, u},
		{"uuid binary to text key", ub, true, oidUUID, KeyText, u},
		{"int8 binary", int8Bin(-5), true, oidInt8, KeyBigint, "-5"},
		{"int4 binary", int4Bin(-5), true, oidInt4, KeyBigint, "-5"},
		{"int2 binary", int2Bin(-5), true, oidInt2, KeyBigint, "-5"},
		{"int4 text", txt(" 12 "), false, oidInt4, KeyBigint, "12"},
		{"text to bigint", txt("12"), false, oidText, KeyBigint, "12"},
		{"int8 to text key", int8Bin(12), true, oidInt8, KeyText, "12"},
		{"text binary", txt("héllo"), true, oidText, KeyText, "héllo"},
	}
	for _, c := range cases {
		k, err := decodeKey(c.raw, c.bin, c.oid, c.kt)
		if err != nil || k.String() != c.want || k.Type() != c.kt {
			t.Errorf("%s: %v %v, want %s", c.name, k, err, c.want)
		}
	}
	bad := []struct {
		name string
		raw  []byte
		bin  bool
		oid  uint32
		kt   KeyType
	}{
		{"uuid 15 bytes", ub[:15], true, oidUUID, KeyUUID},
		{"int8 4 bytes", int4Bin(1), true, oidInt8, KeyBigint},
		{"int4 text overflow", txt("2147483648"), false, oidInt4, KeyBigint},
		{"integer for uuid", int8Bin(1), true, oidInt8, KeyUUID},
		{"uuid for bigint", ub, true, oidUUID, KeyBigint},
		{"json", txt("{}"), false, 114, KeyText},
	}
	for _, c := range bad {
		if _, err := decodeKey(c.raw, c.bin, c.oid, c.kt); err == nil || pgCode(err) == "" {
			t.Errorf("%s: err = %v, want a *pgerr.Error", c.name, err)
		}
	}
}

func TestArraysInTextAndBinaryFormat(t *testing.T) {
	elems, err := parseArrayText(` [1:3]={ a , "b c" ,NULL, "N\"ULL", {d,"null"}} `)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range elems {
		if e.null {
			got = append(got, "<null>")
		} else {
			got = append(got, string(e.raw))
		}
	}
	if want := []string{"a", "b c", "<null>", `N"ULL`, "d", "null"}; !slices.Equal(got, want) {
		t.Errorf("elements %q, want %q", got, want)
	}
	for _, s := range []string{"", "{", "{a", "a,b", "{a}x", `{"a}`, "{a b\"c\"}", "[1:2]{a}"} {
		if _, err := parseArrayText(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
	if e, err := parseArrayText("{}"); err != nil || len(e) != 0 {
		t.Errorf("{}: %v %v", e, err)
	}

	b := arrayBin(oidInt8, int8Bin(1), nil, int8Bin(3))
	oid, elems, err := parseArrayBinary(b)
	if err != nil || oid != oidInt8 || len(elems) != 3 || !elems[1].null || string(elems[2].raw) != string(int8Bin(3)) {
		t.Fatalf("binary: %d %v %v", oid, elems, err)
	}
	for i := range len(b) {
		if _, _, err := parseArrayBinary(b[:i]); err == nil && i != 0 {
			t.Errorf("truncated to %d bytes: parsed", i)
		}
	}
	if _, e, err := parseArrayBinary(append(b, 0)); err == nil {
		t.Errorf("trailing byte: %v", e)
	}
	// A header claiming billions of elements is refused before any work.
	huge := arrayBin(oidInt8)
	huge[12], huge[13], huge[14], huge[15] = 0x7f, 0xff, 0xff, 0xff
	if _, _, err := parseArrayBinary(huge); err == nil {
		t.Error("huge dimension accepted")
	}
}

func TestKeyTypeAndPolicyNames(t *testing.T) {
	for _, kt := range []KeyType{KeyUUID, KeyBigint, KeyText} {
		if got, err := ParseKeyType(kt.String()); err != nil || got != kt {
			t.Errorf("%s: %v %v", kt, got, err)
		}
	}
	for _, p := range []KeylessPolicy{KeylessReject, KeylessAll, KeylessDefault} {
		if got, err := ParseKeylessPolicy(p.String()); err != nil || got != p {
			t.Errorf("%s: %v %v", p, got, err)
		}
	}
	if _, err := ParseKeyType("int"); err == nil {
		t.Error("int accepted as a key type")
	}
	if s := KeyType(9).String(); s != "KeyType("+strconv.Itoa(9)+")" {
		t.Error(s)
	}
}
