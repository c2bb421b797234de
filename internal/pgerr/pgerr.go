// Package pgerr is the sidecar's single error taxonomy: the SQLSTATE codes the
// sidecar itself produces, a typed error carrying one of them, and its
// encoding as a Postgres ErrorResponse.
//
// Errors relayed from an upstream server never pass through this package:
// they are forwarded byte for byte. Only failures the sidecar detects on its
// own become *Error values.
package pgerr

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Code is a five-character SQLSTATE.
type Code string

// SQLSTATEs the sidecar produces. The table is the contract with clients:
// drivers decide whether to retry from the class (first two characters).
const (
	ConnectionFailure       Code = "08006" // upstream unreachable or lost
	ClientUnableToConnect   Code = "08001" // sidecar could not establish an upstream connection
	ConnectionDoesNotExist  Code = "08003"
	ServerRejected          Code = "08004" // no route for the statement
	ProtocolViolation       Code = "08P01"
	InvalidAuthorization    Code = "28000" // certificate or client authentication failure
	InvalidPassword         Code = "28P01"
	InvalidCatalogName      Code = "3D000" // unknown database
	TooManyConnections      Code = "53300" // pool wait exhausted or client limit reached
	AdminShutdown           Code = "57P01" // draining
	CannotConnectNow        Code = "57P03" // starting
	QueryCanceled           Code = "57014"
	FeatureNotSupported     Code = "0A000"
	UndefinedObject         Code = "42704"
	InternalError           Code = "XX000"
	SyntaxError             Code = "42601"
	DuplicatePrepared       Code = "42P05"
	InvalidParameterValue   Code = "22023"
	ConfigurationLimit      Code = "53400"
	InvalidTransactionState Code = "25000"
	InFailedSQLTransaction  Code = "25P02" // a failed transaction ignores commands until its end
	TransactionUnknown      Code = "08007" // the commit of a write spanning shards was cut off: outcome unknown
	TransactionRollback     Code = "40000" // a write spanning shards was rolled back by the two-phase recovery
	UndefinedTable          Code = "42P01"
	ProgramLimitExceeded    Code = "54000" // a statement too large to route
	DataCorrupted           Code = "XX001" // replicated tables differ between shards
	BadCopyFileFormat       Code = "22P04" // a COPY row the sidecar cannot split
	NotNullViolation        Code = "23502" // a COPY row with no routing key
)

// Class returns the two-character SQLSTATE class, or "" for a malformed code.
func (c Code) Class() string {
	if len(c) < 2 {
		return ""
	}
	return string(c[:2])
}

// Severity is the ErrorResponse severity the sidecar sends.
type Severity string

// Severities used by the sidecar. FATAL means the sidecar closes the client
// connection right after sending the error.
const (
	SevError Severity = "ERROR"
	SevFatal Severity = "FATAL"
)

// Error is a failure produced by the sidecar, safe to show to a client.
// Message and Detail must never contain secrets; the wrapped Cause may and
// is only logged.
type Error struct {
	Severity Severity
	Code     Code
	Message  string
	Detail   string
	Hint     string
	// Position is the 1-based character position in the statement the
	// error refers to (a syntax error), 0 for none.
	Position int
	// Routine names the Postgres source function that reports an error the
	// sidecar words as Postgres does (scanner_yyerror), "" for none.
	Routine string
	// Retryable says whether the same request may succeed if repeated
	// unchanged (for example after a pool wait or an upstream restart).
	Retryable bool
	// Cause is the underlying error, for logs only.
	Cause error
}

// Error implements error with the client-visible text and the cause.
func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s (SQLSTATE %s): %v", e.Message, e.Code, e.Cause)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// Fatalf builds a FATAL error with a formatted message.
func Fatalf(code Code, format string, args ...any) *Error {
	return &Error{Severity: SevFatal, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Errorf builds an ERROR-severity error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Severity: SevError, Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithCause returns e with Cause set; e is modified and returned for chaining.
func (e *Error) WithCause(err error) *Error { e.Cause = err; return e }

// WithDetail returns e with Detail set.
func (e *Error) WithDetail(d string) *Error { e.Detail = d; return e }

// WithHint returns e with Hint set.
func (e *Error) WithHint(h string) *Error { e.Hint = h; return e }

// AsFatal returns a copy of e with FATAL severity.
func (e *Error) AsFatal() *Error { c := *e; c.Severity = SevFatal; return &c }

// From converts any error into an *Error. An *Error anywhere in the chain is
// returned as is; anything else becomes a FATAL XX000 "internal error" whose
// cause is kept for the log only, so internal details never reach clients.
func From(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return &Error{Severity: SevFatal, Code: InternalError, Message: "internal error in brownie sidecar", Cause: err}
}

// Response encodes e as a pgproto3 ErrorResponse.
func (e *Error) Response() *pgproto3.ErrorResponse {
	sev := string(e.Severity)
	if sev == "" {
		sev = string(SevError)
	}
	return &pgproto3.ErrorResponse{
		Severity:            sev,
		SeverityUnlocalized: sev,
		Code:                string(e.Code),
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
		Position:            int32(e.Position),
		Routine:             e.Routine,
	}
}

// Encode appends the wire encoding of e as an ErrorResponse to buf.
func (e *Error) Encode(buf []byte) []byte {
	out, err := e.Response().Encode(buf)
	if err != nil {
		// ErrorResponse encoding only fails for oversize messages, which
		// sidecar-made messages never are.
		panic("pgerr: encode error response: " + err.Error())
	}
	return out
}
