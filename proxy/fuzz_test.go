package proxy

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzAnalyzeAgreesWithTheParser checks the keyword prefilter that lets
// analyze skip the parser (mayTouchState, mayStartWithTxWord): whatever the
// text, analyze gives what parsing it gives. A text the prefilter wrongly
// skips would have its SET, BEGIN, DDL or pin go unnoticed.
func FuzzAnalyzeAgreesWithTheParser(f *testing.F) {
	for _, s := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
		"BEGIN", "  commit", "SET TimeZone = 'UTC'", "RESET ALL", "DISCARD ALL",
		"CREATE TEMP TABLE t (a int)", "LISTEN x", "SELECT pg_advisory_lock(1)",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "PREPARE p AS SELECT 1",
		"SELECT set_config('a.b', 'c', false)", "/* c */ BEGIN", "-- c\nDROP TABLE t",
		"SELECT 1; CREATE TABLE t (a int)", "\fCOMMIT", "VACUUM t", "SET LOCAL a.b = 1",
		"ALTER SYSTEM SET work_mem = '4MB'", "DEALLOCATE ALL", "COMMIT PREPARED 'x'",
		"SELECT 'a;b'", "/* /* nested */ */ ROLLBACK", ";BEGIN",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		got := newAnalyzer(4).analyze(text)
		if want := parseAnalysis(text); !reflect.DeepEqual(got, want) {
			t.Fatalf("analyze(%q) = %+v, parsing gives %+v", text, *got, *want)
		}
	})
}

// FuzzClientMessageDecoding feeds random bodies to the decoders of the
// client messages the session reads itself (Parse, the head of Bind):
// no panic, a Parse decodes the same with or without a previous Parse to
// share text and parameter types with, and a decoded Parse encodes back
// to the same body.
func FuzzClientMessageDecoding(f *testing.F) {
	f.Add(appendParse(nil, "", "SELECT $1", []uint32{23})[5:])
	f.Add(appendParse(nil, "s1", "SELECT 1", nil)[5:])
	f.Add([]byte("portal\x00stmt\x00\x00\x00"))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := decodeParse(body, &parseMsg{})
		again, err2 := decodeParse(body, &parseMsg{query: "SELECT $1", oids: []uint32{23}})
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(m, again) && err == nil {
			t.Fatalf("decodeParse(%q) depends on the previous Parse: %+v %v, %+v %v", body, m, err, again, err2)
		}
		if err == nil {
			if back := appendParse(nil, m.name, m.query, m.oids)[5:]; !bytes.Equal(back, body) {
				t.Fatalf("decodeParse(%q) = %+v, which encodes as %q", body, m, back)
			}
		}
		if portal, stmt, rest, err := bindHeader(body); err == nil {
			if rest != len(portal)+1+len(stmt)+1 || rest > len(body) {
				t.Fatalf("bindHeader(%q) = %q, %q, %d", body, portal, stmt, rest)
			}
		}
	})
}
