package tls

import (
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"time"
)

// ErrNoCertificate is returned by Source.Current and
// Source.GetClientCertificate when no certificate has been loaded yet.
var ErrNoCertificate = errors.New("no client certificate loaded")

// Reasons carried by CertError and Status.LastErrorReason. They are short,
// stable labels suitable for metric labels.
const (
	ReasonRead        = "read"
	ReasonParse       = "parse"
	ReasonMismatch    = "mismatch"
	ReasonExpired     = "expired"
	ReasonNotYetValid = "not_yet_valid"
	ReasonCA          = "ca"
	// ReasonVaultUnreachable: no HTTP response from Vault (connection
	// refused, timeout, TLS failure).
	ReasonVaultUnreachable = "vault_unreachable"
	// ReasonVaultUnavailable: Vault answered 5xx (sealed, standby, internal
	// error) or 429.
	ReasonVaultUnavailable = "vault_unavailable"
	// ReasonVaultDenied: Vault answered 403 even with a fresh token.
	ReasonVaultDenied = "vault_denied"
	// ReasonVaultRejected: Vault answered another 4xx, such as 400 for an
	// unknown PKI role or a TTL it does not allow.
	ReasonVaultRejected = "vault_rejected"
	// ReasonNotFound: the KV v2 secret does not exist or its latest version
	// is deleted.
	ReasonNotFound = "not_found"
	// ReasonLogin: the sidecar could not obtain a Vault token (login,
	// token file, lookup-self).
	ReasonLogin = "login"
)

// CertError describes why a certificate could not be loaded or used. Reason
// is one of the Reason constants; Msg is safe to show to operators because it
// never contains key material. Values are immutable once returned.
type CertError struct {
	Reason string
	Msg    string

	path string // file the error is about, for logs; may be empty
	err  error  // underlying cause, for errors.Is; never a key parse error
}

// Error returns the message. It is safe to log.
func (e *CertError) Error() string { return e.Msg }

// Unwrap returns the underlying cause, such as fs.ErrNotExist, if any.
func (e *CertError) Unwrap() error { return e.err }

// Bundle is one immutable certificate generation. A Bundle is shared by all
// readers and must not be modified after a Source publishes it.
type Bundle struct {
	// Certificate is the chain and private key, with Leaf set, ready for a
	// crypto/tls client.
	Certificate cryptotls.Certificate
	// Leaf is the parsed client certificate.
	Leaf *x509.Certificate
	// Roots verifies the upstream server certificate; it holds the
	// certificates from ca.crt, or is nil if the source has none.
	Roots *x509.CertPool
	// CAs are the certificates in Roots, for tools that need them as files
	// (pg_dump, pg_restore).
	CAs []*x509.Certificate
	// Serial is the leaf serial in lower-case hex without colons.
	Serial string
	// NotBefore and NotAfter bound the leaf's validity.
	NotBefore, NotAfter time.Time
	// Generation is 1 for the first bundle a source loads and grows by one
	// per swap.
	Generation uint64

	fingerprint [32]byte // hash of the source files, to detect no-op reloads
}

// ValidAt reports whether the leaf certificate is valid at t. It returns nil
// or a *CertError with Reason "expired" or "not_yet_valid" whose message names
// the serial and the validity window. It is safe for concurrent use.
func (b *Bundle) ValidAt(t time.Time) error {
	// "now" has milliseconds: certificate times are whole seconds, and
	// "expired at 12:00:07 (now 12:00:07)" would read as a contradiction.
	const nowFormat = "2006-01-02T15:04:05.000Z07:00"
	switch {
	case t.After(b.NotAfter):
		return &CertError{Reason: ReasonExpired, Msg: fmt.Sprintf(
			"client certificate serial %s expired at %s (now %s)",
			b.Serial, b.NotAfter.UTC().Format(time.RFC3339), t.UTC().Format(nowFormat))}
	case t.Before(b.NotBefore):
		return &CertError{Reason: ReasonNotYetValid, Msg: fmt.Sprintf(
			"client certificate serial %s is not valid before %s (not after %s, now %s)",
			b.Serial, b.NotBefore.UTC().Format(time.RFC3339),
			b.NotAfter.UTC().Format(time.RFC3339), t.UTC().Format(nowFormat))}
	}
	return nil
}

// Refresher is implemented by sources that can fetch a certificate on
// demand, such as VaultSource. Dialers call RefreshNow when Current returns
// no bundle or one that is no longer valid (Bundle.ValidAt fails), then call
// Current again; a non-nil error means no valid certificate could be
// obtained and the dial should fail with it. Implementations coalesce
// concurrent calls and rate-limit requests to their backend, so calling it
// from every failing dial is safe; it blocks at most until ctx ends.
type Refresher interface {
	RefreshNow(ctx context.Context) error
}

// Source supplies the current upstream client certificate. Implementations
// are safe for concurrent use; Current and GetClientCertificate never block
// and never do I/O.
type Source interface {
	// Current returns the bundle in use, or ErrNoCertificate when none is
	// loaded. The bundle may be expired: callers check Bundle.ValidAt before
	// dialing.
	Current() (*Bundle, error)
	// GetClientCertificate plugs into crypto/tls.Config. It only reads an
	// atomic pointer.
	GetClientCertificate(*cryptotls.CertificateRequestInfo) (*cryptotls.Certificate, error)
	// Run watches or refreshes the certificate until ctx ends, then returns
	// nil.
	Run(ctx context.Context) error
	// Status reports the current certificate and the refresh history for
	// readiness checks and metrics.
	Status() Status
}

// Status is a point-in-time report of a Source. It holds no secrets and may
// be shown to operators as is.
type Status struct {
	// Source names the implementation: "file" or "vault".
	Source string
	// Serial, NotBefore, NotAfter and Generation describe the bundle in use;
	// they are zero when none is loaded.
	Serial              string
	NotBefore, NotAfter time.Time
	Generation          uint64
	// Rotations counts successful swaps after the first load.
	Rotations uint64
	// LastError is the last load or refresh problem, or "" if the last
	// attempt succeeded with a currently valid certificate.
	LastError string
	// LastErrorReason is the Reason of LastError, one of the Reason
	// constants.
	LastErrorReason string
	// LastAttempt is when the source last tried to load.
	LastAttempt time.Time
	// Failures counts attempts since start that recorded a LastError.
	Failures uint64
	// FailuresByReason splits Failures by Reason; it is nil before the first
	// failure. Status returns a copy the caller may keep.
	FailuresByReason map[string]uint64
	// NextRefresh is when the source plans its next fetch; zero for sources
	// that only react to changes.
	NextRefresh time.Time

	// AuthMethod is how the source authenticates to Vault ("token",
	// "kubernetes", "approle"); "" for sources that do not use Vault.
	AuthMethod string
	// Logins counts Vault tokens obtained (logins, token files read and
	// looked up); LoginFailures counts attempts that failed.
	Logins, LoginFailures uint64
	// Renewals counts successful Vault token renew-self calls;
	// RenewFailures counts failed ones.
	Renewals, RenewFailures uint64
}

// countFailure adds one failure with reason to Failures and
// FailuresByReason.
func (st *Status) countFailure(reason string) {
	st.Failures++
	if st.FailuresByReason == nil {
		st.FailuresByReason = map[string]uint64{}
	}
	st.FailuresByReason[reason]++
}

// clone returns a copy of st that shares no map with it.
func (st *Status) clone() Status {
	c := *st
	c.FailuresByReason = maps.Clone(st.FailuresByReason)
	return c
}
