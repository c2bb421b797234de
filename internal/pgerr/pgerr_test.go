package pgerr_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// decode reads one backend message from buf with pgproto3.
func decode(t *testing.T, buf []byte) *pgproto3.ErrorResponse {
	t.Helper()
	r := bytes.NewReader(buf)
	fe := pgproto3.NewFrontend(r, io.Discard)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("pgproto3 cannot decode %q: %v", buf, err)
	}
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok {
		t.Fatalf("decoded %T, want *pgproto3.ErrorResponse", msg)
	}
	if r.Len() != 0 {
		t.Errorf("%d bytes left after the ErrorResponse", r.Len())
	}
	return er
}

func TestEncodeProducesAnErrorResponsePgprotoDecodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *pgerr.Error
		want pgproto3.ErrorResponse
	}{
		{
			"fatal with detail and hint",
			pgerr.Fatalf(pgerr.InvalidCatalogName, "database %q does not exist", "nope").
				WithDetail(`this sidecar serves database "brownie_metadata"`).
				WithHint("connect to brownie_metadata"),
			pgproto3.ErrorResponse{
				Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "3D000",
				Message: `database "nope" does not exist`,
				Detail:  `this sidecar serves database "brownie_metadata"`,
				Hint:    "connect to brownie_metadata",
			},
		},
		{
			"plain error",
			pgerr.Errorf(pgerr.ServerRejected, "no route for team %d", 7),
			pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "08004", Message: "no route for team 7"},
		},
		{
			"no severity defaults to ERROR",
			&pgerr.Error{Code: pgerr.FeatureNotSupported, Message: "nope"},
			pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000", Message: "nope"},
		},
		{
			"cause stays out of the response",
			pgerr.Fatalf(pgerr.ConnectionFailure, "upstream unreachable").WithCause(errors.New("dial tcp 10.1.2.3:5432: secret-host")),
			pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006", Message: "upstream unreachable"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := tc.err.Encode(nil)
			if buf[0] != 'E' {
				t.Fatalf("message type %q, want 'E'", buf[0])
			}
			got := decode(t, buf)
			if got.Severity != tc.want.Severity || got.SeverityUnlocalized != tc.want.SeverityUnlocalized ||
				got.Code != tc.want.Code || got.Message != tc.want.Message ||
				got.Detail != tc.want.Detail || got.Hint != tc.want.Hint {
				t.Errorf("decoded %+v\nwant    %+v", *got, tc.want)
			}
			if bytes.Contains(buf, []byte("secret-host")) {
				t.Error("the cause reached the wire")
			}
		})
	}
}

func TestEncodeAppendsToTheBuffer(t *testing.T) {
	e := pgerr.Errorf(pgerr.QueryCanceled, "canceled")
	first := e.Encode(nil)
	got := e.Encode([]byte("prefix"))
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[len("prefix"):], first) {
		t.Errorf("Encode(prefix) = %q, want prefix + %q", got, first)
	}
	two := e.Encode(e.Encode(nil))
	fe := pgproto3.NewFrontend(bytes.NewReader(two), io.Discard)
	for i := range 2 {
		if msg, err := fe.Receive(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		} else if _, ok := msg.(*pgproto3.ErrorResponse); !ok {
			t.Fatalf("message %d is %T", i, msg)
		}
	}
}

func TestFromHidesUnknownErrorsBehindInternalError(t *testing.T) {
	cause := fmt.Errorf("open /etc/brownie/secret.key: permission denied")
	e := pgerr.From(cause)
	if e.Code != pgerr.InternalError || e.Severity != pgerr.SevFatal {
		t.Errorf("got code %s severity %s, want XX000 FATAL", e.Code, e.Severity)
	}
	if !strings.HasPrefix(e.Message, "internal error") {
		t.Errorf("Message %q does not start with \"internal error\"", e.Message)
	}
	if strings.Contains(e.Message, "secret") || strings.Contains(e.Detail, "secret") || strings.Contains(e.Hint, "secret") {
		t.Errorf("the cause leaked into the client-visible text: %+v", e)
	}
	if !errors.Is(e, cause) || e.Cause != cause {
		t.Errorf("cause not kept for the log: %+v", e)
	}
	if er := decode(t, e.Encode(nil)); strings.Contains(er.Message, "secret") || er.Code != "XX000" {
		t.Errorf("wire message %+v", er)
	}
	if !strings.Contains(e.Error(), "permission denied") {
		t.Errorf("Error() %q omits the cause the log needs", e.Error())
	}
}

func TestFromReturnsAnErrorFoundInTheChain(t *testing.T) {
	pe := pgerr.Errorf(pgerr.TooManyConnections, "pool exhausted")
	pe.Retryable = true
	wrapped := fmt.Errorf("acquire: %w", fmt.Errorf("shard s1: %w", pe))
	if got := pgerr.From(wrapped); got != pe {
		t.Errorf("From(wrapped) = %+v, want the wrapped *Error itself", got)
	}
	if got := pgerr.From(pe); got != pe {
		t.Errorf("From(pe) = %+v, want pe", got)
	}
	joined := errors.Join(errors.New("other"), pe)
	if got := pgerr.From(joined); got != pe {
		t.Errorf("From(joined) = %+v, want pe", got)
	}
}

func TestAsFatalCopiesInsteadOfModifying(t *testing.T) {
	e := pgerr.Errorf(pgerr.AdminShutdown, "draining")
	f := e.AsFatal()
	if f.Severity != pgerr.SevFatal || e.Severity != pgerr.SevError || f == e {
		t.Errorf("AsFatal: original %s, copy %s (same pointer %v)", e.Severity, f.Severity, f == e)
	}
	if f.Code != e.Code || f.Message != e.Message {
		t.Errorf("AsFatal changed more than the severity: %+v", f)
	}
}

func TestErrorTextNamesTheCodeAndTheCause(t *testing.T) {
	e := pgerr.Errorf(pgerr.ProtocolViolation, "bad message")
	if got, want := e.Error(), "bad message (SQLSTATE 08P01)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e.WithCause(io.ErrUnexpectedEOF)
	if got, want := e.Error(), "bad message (SQLSTATE 08P01): unexpected EOF"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(e, io.ErrUnexpectedEOF) {
		t.Error("Unwrap does not reach the cause")
	}
}

func TestClassIsTheFirstTwoCharacters(t *testing.T) {
	for _, tc := range []struct {
		code pgerr.Code
		want string
	}{
		{pgerr.ConnectionFailure, "08"},
		{pgerr.ProtocolViolation, "08"},
		{pgerr.InvalidAuthorization, "28"},
		{pgerr.TooManyConnections, "53"},
		{pgerr.AdminShutdown, "57"},
		{pgerr.InternalError, "XX"},
		{"0A000", "0A"},
		{"08", "08"},
		{"0", ""},
		{"", ""},
	} {
		if got := tc.code.Class(); got != tc.want {
			t.Errorf("Code(%q).Class() = %q, want %q", tc.code, got, tc.want)
		}
	}
}

func TestEveryCodeIsAFiveCharacterSQLSTATE(t *testing.T) {
	for _, c := range []pgerr.Code{
		pgerr.ConnectionFailure, pgerr.ClientUnableToConnect, pgerr.ConnectionDoesNotExist,
		pgerr.ServerRejected, pgerr.ProtocolViolation, pgerr.InvalidAuthorization,
		pgerr.InvalidPassword, pgerr.InvalidCatalogName, pgerr.TooManyConnections,
		pgerr.AdminShutdown, pgerr.CannotConnectNow, pgerr.QueryCanceled,
		pgerr.FeatureNotSupported, pgerr.UndefinedObject, pgerr.InternalError,
		pgerr.InvalidParameterValue, pgerr.ConfigurationLimit, pgerr.InvalidTransactionState,
	} {
		if len(c) != 5 || strings.ToUpper(string(c)) != string(c) {
			t.Errorf("code %q is not a five-character SQLSTATE", c)
		}
	}
}
