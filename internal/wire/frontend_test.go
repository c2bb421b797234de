package wire

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestAppendedQueryAndCopyFailDecodeAsPgprotoReadsThem(t *testing.T) {
	b := AppendQuery([]byte("x"), "SELECT 1")
	var q pgproto3.Query
	if b[0] != 'x' || b[1] != 'Q' || q.Decode(b[6:]) != nil || q.String != "SELECT 1" || int(b[2])<<24|int(b[3])<<16|int(b[4])<<8|int(b[5]) != len(b)-2 {
		t.Errorf("AppendQuery: %q", b)
	}
	b = AppendCopyFail(nil, "no")
	var f pgproto3.CopyFail
	if b[0] != 'f' || f.Decode(b[5:]) != nil || f.Message != "no" {
		t.Errorf("AppendCopyFail: %q", b)
	}
}

func TestErrorFieldsAreReadWithoutDecoding(t *testing.T) {
	body, err := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42P01", Message: "relation \"t\" does not exist"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	body = body[5:]
	if got := ErrorClass(body); got != "42" {
		t.Errorf("ErrorClass = %q", got)
	}
	if got := ErrorField(body, 'M'); got != `relation "t" does not exist` {
		t.Errorf("ErrorField(M) = %q", got)
	}
	if got := ErrorField(body, 'D'); got != "" {
		t.Errorf("ErrorField(D) = %q, want none", got)
	}
	if got := ErrorClass([]byte{0}); got != "unknown" {
		t.Errorf("ErrorClass of no fields = %q", got)
	}
}

func TestCStringSplitsAtTheFirstNUL(t *testing.T) {
	s, rest, ok := CString([]byte("portal\x00stmt\x00"))
	if !ok || s != "portal" || string(rest) != "stmt\x00" {
		t.Errorf("CString = %q %q %v", s, rest, ok)
	}
	if _, _, ok := CString([]byte("no terminator")); ok {
		t.Error("CString without a NUL reported ok")
	}
}
