package merge

import (
	"math"
	"testing"
)

// Golden outputs below were taken from PostgreSQL 15.

// TestAvgMatchesPostgres checks avg's value and display scale (numeric_div's
// select_div_scale) for integer and numeric inputs.
func TestAvgMatchesPostgres(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"1", "2"}, "1.5000000000000000"},
		{[]string{"1.50", "2.25"}, "1.8750000000000000"},
		{[]string{"1", "2", "2"}, "1.6666666666666667"},
		{[]string{"1", "2", "2", "4", "5", "6", "10000000000"}, "1428571431.42857143"},
		{[]string{"0.001", "0.0020"}, "0.00150000000000000000"},
		{[]string{"-7.5", "1"}, "-3.2500000000000000"},
		{[]string{"123456789.123456789", "1"}, "61728395.061728394500"},
		{[]string{"0", "0"}, "0.00000000000000000000"},
		{[]string{"1e-20", "3e-20", "1e-20"}, "0.000000000000000000016666666666666667"},
		{[]string{"NaN", "1"}, "NaN"},
		{[]string{"Infinity", "1"}, "Infinity"},
		{[]string{"Infinity", "-Infinity"}, "NaN"},
	}
	for _, tc := range tests {
		sum := &decimal{}
		for _, s := range tc.in {
			d, err := parseDecimal([]byte(s))
			if err != nil {
				t.Fatalf("parse %s: %v", s, err)
			}
			sum = addDecimal(sum, d)
		}
		if got := string(divDecimal(sum, int64(len(tc.in))).appendText(nil)); got != tc.want {
			t.Errorf("avg%v = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestNumericWireForms round-trips numeric text and binary forms, binary
// digits stripped as make_result leaves them.
func TestNumericWireForms(t *testing.T) {
	tests := []struct {
		text string
		bin  []byte
	}{
		{"0", []byte{0, 0, 0, 0, 0, 0, 0, 0}},
		{"0.00", []byte{0, 0, 0, 0, 0, 0, 0, 2}},
		{"1", []byte{0, 1, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"-1.5", []byte{0, 2, 0, 0, 0x40, 0, 0, 1, 0, 1, 0x13, 0x88}},
		{"10000", []byte{0, 1, 0, 1, 0, 0, 0, 0, 0, 1}},
		{"12345678.9012", []byte{0, 3, 0, 1, 0, 0, 0, 4, 0x04, 0xd2, 0x16, 0x2e, 0x23, 0x34}},
		{"0.0001", []byte{0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1}},
		{"0.00001", []byte{0, 1, 0xff, 0xfe, 0, 0, 0, 5, 0x03, 0xe8}},
		{"NaN", []byte{0, 0, 0, 0, 0xc0, 0, 0, 0}},
		{"Infinity", []byte{0, 0, 0, 0, 0xd0, 0, 0, 0x20}},
		// The display scale of both infinities is 32: numeric_send reads
		// their header bits 0x1000 as a short numeric's scale.
		{"-Infinity", []byte{0, 0, 0, 0, 0xf0, 0, 0, 0x20}},
	}
	for _, tc := range tests {
		d, err := parseDecimal([]byte(tc.text))
		if err != nil {
			t.Fatalf("parse %s: %v", tc.text, err)
		}
		if got := d.appendBinary(nil); string(got) != string(tc.bin) {
			t.Errorf("binary(%s) = %x, want %x", tc.text, got, tc.bin)
		}
		b, err := decodeNumericBinary(tc.bin)
		if err != nil {
			t.Fatalf("decode %x: %v", tc.bin, err)
		}
		if got := string(b.appendText(nil)); got != tc.text {
			t.Errorf("text(%x) = %s, want %s", tc.bin, got, tc.text)
		}
	}
	for _, bad := range []string{"", "-", ".", "1..2", "1e", "abc", "1 2"} {
		if _, err := parseDecimal([]byte(bad)); err == nil {
			t.Errorf("parseDecimal(%q) succeeded", bad)
		}
	}
}

// TestFloatTextMatchesPostgres checks float8out and float4out's shortest
// exact output.
func TestFloatTextMatchesPostgres(t *testing.T) {
	f8 := map[float64]string{
		0.1: "0.1", 1e22: "1e+22", 1e21: "1e+21", 123456789012345.6: "123456789012345.6",
		1234567890123456.7: "1.2345678901234568e+15", 5e-324: "5e-324", math.Copysign(0, -1): "-0",
		0.00001234: "1.234e-05", 0.0001234: "0.0001234", math.NaN(): "NaN", math.Inf(1): "Infinity",
		math.Inf(-1): "-Infinity", 1e15: "1e+15", 1e14: "100000000000000",
	}
	for f, want := range f8 {
		if got := string(appendFloat(nil, f, 64, false)); got != want {
			t.Errorf("float8 %v = %s, want %s", f, got, want)
		}
	}
	f4 := map[float32]string{
		0.1: "0.1", 1e22: "1e+22", 123456.7: "123456.7", 1234567.8: "1.2345678e+06", 1e-5: "1e-05",
		3.4028235e38: "3.4028235e+38", 0.0001234: "0.0001234",
	}
	for f, want := range f4 {
		if got := string(appendFloat(nil, float64(f), 32, false)); got != want {
			t.Errorf("float4 %v = %s, want %s", f, got, want)
		}
	}
}

// TestIntervalTextMatchesPostgres round-trips interval_out's text in
// IntervalStyle postgres.
func TestIntervalTextMatchesPostgres(t *testing.T) {
	tests := []struct {
		text string
		iv   interval
	}{
		{"1 year 2 mons 3 days 04:05:06.7", interval{time: 14706700000, day: 3, month: 14}},
		{"-1 years -2 mons +3 days -04:05:06.7", interval{time: -14706700000, day: 3, month: -14}},
		{"-1 days +00:00:01", interval{time: 1000000, day: -1}},
		{"1 mon -1 days", interval{day: -1, month: 1}},
		{"100:00:00", interval{time: 360000000000}},
		{"-00:00:00.000001", interval{time: -1}},
		{"00:00:00", interval{}},
		{"11 mons", interval{month: 11}},
		{"-1 years", interval{month: -12}},
	}
	for _, tc := range tests {
		iv, err := parseIntervalText([]byte(tc.text))
		if err != nil || iv != tc.iv {
			t.Errorf("parse %q = %+v, %v; want %+v", tc.text, iv, err, tc.iv)
		}
		if got := string(tc.iv.appendText(nil)); got != tc.text {
			t.Errorf("text(%+v) = %q, want %q", tc.iv, got, tc.text)
		}
	}
	for _, bad := range []string{"", "P1Y", "@ 1 year", "1-2", "1 fortnight", "01:02:03 4 days"} {
		if _, err := parseIntervalText([]byte(bad)); err == nil {
			t.Errorf("parseIntervalText(%q) succeeded", bad)
		}
	}
}

// TestIntervalAvgMatchesPostgres checks interval_avg's division.
func TestIntervalAvgMatchesPostgres(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"1 mon", "1 day", "00:00:01"}, "10 days 08:00:00.333333"},
		{[]string{"1 year 1 mon 1 day 01:01:01.000001", "-1 days", "7 days"}, "4 mons 12 days 08:20:20.333334"},
	}
	for _, tc := range tests {
		var sum interval
		for _, s := range tc.in {
			iv, err := parseIntervalText([]byte(s))
			if err != nil {
				t.Fatal(err)
			}
			if sum, err = addInterval(sum, iv); err != nil {
				t.Fatal(err)
			}
		}
		if got := string(divInterval(sum, float64(len(tc.in))).appendText(nil)); got != tc.want {
			t.Errorf("avg%v = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestTextDatesMatchBinary checks that ISO text dates and timestamps read
// to the values PostgreSQL sends in binary.
func TestTextDatesMatchBinary(t *testing.T) {
	ts := []struct {
		text string
		tz   bool
		want int64
	}{
		{"2000-01-01 00:00:00", false, 0},
		{"2000-01-01 00:00:00+00", true, 0},
		{"2000-01-01 01:00:00+01", true, 0},
		{"1999-12-31 20:29:59.5-03:30", true, -500000},
		{"1970-01-01 00:00:00", false, -946684800000000},
		{"0001-01-01 00:00:00 BC", false, -63113904000000000},
		{"infinity", false, math.MaxInt64},
		{"-infinity", true, math.MinInt64},
		{"1880-01-01 08:29:08-03:30:52", true, -3786825600000000 + 12*3600000000}, // 12:00 UTC
	}
	for _, tc := range ts {
		got, err := parseTimestampText([]byte(tc.text), tc.tz)
		if err != nil || got != tc.want {
			t.Errorf("parseTimestampText(%q) = %d, %v; want %d", tc.text, got, err, tc.want)
		}
	}
	for _, bad := range []string{"Sat Jan 01 00:00:00 2000 PST", "01/01/2000", "2000-01-01", "2000-01-01 00:00:00 PST"} {
		if _, err := parseTimestampText([]byte(bad), true); err == nil {
			t.Errorf("parseTimestampText(%q) succeeded", bad)
		}
	}
	if d, err := parseDateText([]byte("2000-01-02")); err != nil || d != 1 {
		t.Errorf("parseDateText(2000-01-02) = %d, %v", d, err)
	}
}
