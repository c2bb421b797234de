package tls

import (
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Vault certificate modes (VAULT_MODE).
const (
	// VaultModeSign generates an ECDSA P-256 key in memory and sends only a
	// CSR to <mount>/sign/<role>; the key never leaves the process.
	VaultModeSign = "sign"
	// VaultModeIssue lets Vault generate the key: <mount>/issue/<role>.
	VaultModeIssue = "issue"
	// VaultModeKV reads a static bundle (client_cert, client_key, ca_cert)
	// from a KV v2 secret and polls it for changes.
	VaultModeKV = "kv"
)

// Vault authentication methods (VAULT_AUTH).
const (
	VaultAuthToken      = "token"
	VaultAuthKubernetes = "kubernetes"
	VaultAuthAppRole    = "approle"
)

// Defaults applied by NewVaultSource to zero VaultConfig fields.
const (
	DefaultVaultTimeout        = 10 * time.Second
	DefaultVaultPKIMount       = "pki"
	DefaultVaultKVPath         = "secret/brownie-metadata/certs"
	DefaultVaultKVPollInterval = time.Minute
	DefaultVaultRefreshBuffer  = 5 * time.Minute
	DefaultVaultK8sMount       = "kubernetes"
	DefaultVaultK8sTokenFile   = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultVaultAppRoleMount   = "approle"
	// DefaultVaultMinRefreshInterval and DefaultVaultRefreshBurst bound how
	// often the source asks Vault for a certificate, whatever asks it to.
	DefaultVaultMinRefreshInterval = time.Second
	DefaultVaultRefreshBurst       = 2
)

// tokenExpiryMargin is how long before its expiry a token is no longer used
// for a request: a login comes first.
const tokenExpiryMargin = time.Second

// VaultConfig configures a VaultSource. Zero fields select the defaults
// above; Address, CommonName and the fields of the chosen mode and
// authentication method are required. It holds a token in Auth.Token, so it
// must not be logged.
type VaultConfig struct {
	// Address is the Vault base URL, such as https://vault:8200.
	Address string
	// Namespace is sent as X-Vault-Namespace when not empty.
	Namespace string
	// CACert is a PEM file of CAs that verify Vault's own TLS certificate;
	// empty means the system roots.
	CACert string
	// Timeout bounds each request to Vault. Default 10s.
	Timeout time.Duration

	// Mode is VaultModeSign (default), VaultModeIssue or VaultModeKV.
	Mode string
	// CommonName is the certificate CN requested in sign and issue modes;
	// Postgres maps it to the database role (DB_USER).
	CommonName string
	// PKIMount and PKIRole name the PKI secrets engine and role. The mount
	// defaults to "pki".
	PKIMount, PKIRole string
	// TTL is the requested certificate lifetime; zero lets the role decide.
	TTL time.Duration
	// KVPath is the KV v2 secret in kv mode, as "<mount>/<path>" (the
	// first segment is the mount; "<mount>/data/<path>" is accepted too).
	// Default "secret/brownie-metadata/certs".
	KVPath string
	// KVPollInterval is how often the KV secret is read. Default 1m.
	KVPollInterval time.Duration
	// RefreshBuffer: a certificate is refreshed no later than this before
	// its NotAfter (cut to two thirds of the lifetime for short-lived
	// certificates). Default 5m.
	RefreshBuffer time.Duration
	// UpstreamCAFile, when set, is a PEM file of CAs that verify the
	// Postgres server, used instead of Vault's ca_chain and issuing_ca (or
	// the KV ca_cert). It is read at every refresh.
	UpstreamCAFile string

	// Auth says how to obtain a Vault token.
	Auth VaultAuth

	// MinRefreshInterval and RefreshBurst rate-limit requests for
	// certificates: on average at most one per MinRefreshInterval, in
	// bursts of at most RefreshBurst. Defaults 1s and 2.
	MinRefreshInterval time.Duration
	RefreshBurst       int
}

// VaultAuth configures how a VaultSource obtains its token. Files are re-read
// at each login, so a rotated service-account token or secret id is picked
// up without a restart. Token is a secret and is never logged.
type VaultAuth struct {
	// Method is VaultAuthToken (default), VaultAuthKubernetes or
	// VaultAuthAppRole.
	Method string
	// Token is a Vault token (VAULT_TOKEN); TokenFile, if set, is read
	// instead at each login, as written by Vault Agent.
	Token     string
	TokenFile string
	// KubernetesRole, KubernetesMount (default "kubernetes") and
	// KubernetesTokenFile (default the projected service-account token)
	// configure the Kubernetes method.
	KubernetesRole, KubernetesMount, KubernetesTokenFile string
	// AppRoleRoleID, AppRoleSecretIDFile (optional, for roles with
	// bind_secret_id) and AppRoleMount (default "approle") configure the
	// AppRole method.
	AppRoleRoleID, AppRoleSecretIDFile, AppRoleMount string
}

// vaultToken is the token in use and its lease. It is only touched with
// VaultSource.io held.
type vaultToken struct {
	value     string // never logged
	obtained  time.Time
	ttl       time.Duration // remaining lease at obtained; 0 never expires
	loginTTL  time.Duration // lease granted at login, the renewal increment
	renewable bool
	// relogin is set when a renewal was capped by the token's max TTL:
	// the next maintenance logs in afresh instead of renewing.
	relogin bool
}

func (t *vaultToken) usable(now time.Time) bool {
	return t != nil && (t.ttl == 0 || now.Before(t.obtained.Add(t.ttl-tokenExpiryMargin)))
}

// VaultSource obtains short-lived client certificates from HashiCorp Vault
// (PKI sign or issue, or a KV v2 bundle) and refreshes them ahead of expiry.
// It is safe for concurrent use: Current, GetClientCertificate and Status
// never block and do no I/O; RefreshNow and Run serialise every Vault request
// through one lock, so the token and the API client are used by one
// goroutine at a time. A refresh that fails keeps the bundle in use. The
// source talks to Vault only through github.com/hashicorp/vault/api and never
// logs tokens, service-account JWTs, secret ids or keys.
type VaultSource struct {
	cfg     VaultConfig
	log     *zap.Logger
	client  *api.Client
	limiter *rate.Limiter
	kvMount string
	kvPath  string

	current  atomic.Pointer[Bundle]
	attempts atomic.Uint64 // refresh attempts made, for coalescing

	// io is a one-slot semaphore held for every Vault request; waiting on
	// it honours a context. tok, lastErr and failStreak are guarded by it.
	io         chan struct{}
	tok        *vaultToken
	lastErr    error
	failStreak int
	tokenFails int

	wake chan struct{} // one slot: Run recomputes its schedule

	mu        sync.Mutex // guards status, the schedule and publishing current together
	status    Status
	tokenDue  time.Time // next token renewal or re-login; zero for none
	fetchedAt time.Time // when the bundle in use was obtained
}

var (
	_ Source    = (*VaultSource)(nil)
	_ Refresher = (*VaultSource)(nil)
)

// NewVaultSource checks cfg and returns a source that has no certificate
// yet; it does no I/O. Call RefreshNow to obtain the first certificate
// synchronously and Run to keep it fresh. A nil log discards logs.
func NewVaultSource(cfg VaultConfig, log *zap.Logger) (*VaultSource, error) {
	cfg = cfg.withDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	client, err := newVaultClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &VaultSource{
		cfg:     cfg,
		log:     log,
		client:  client,
		limiter: rate.NewLimiter(rate.Every(cfg.MinRefreshInterval), cfg.RefreshBurst),
		io:      make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		status:  Status{Source: "vault", AuthMethod: cfg.Auth.Method},
	}
	if cfg.Mode == VaultModeKV {
		s.kvMount, s.kvPath = splitKVPath(cfg.KVPath)
	}
	return s, nil
}

func (c VaultConfig) withDefaults() VaultConfig {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&c.Mode, VaultModeSign)
	def(&c.PKIMount, DefaultVaultPKIMount)
	def(&c.KVPath, DefaultVaultKVPath)
	def(&c.Auth.Method, VaultAuthToken)
	def(&c.Auth.KubernetesMount, DefaultVaultK8sMount)
	def(&c.Auth.KubernetesTokenFile, DefaultVaultK8sTokenFile)
	def(&c.Auth.AppRoleMount, DefaultVaultAppRoleMount)
	c.PKIMount = strings.Trim(c.PKIMount, "/")
	c.Auth.KubernetesMount = strings.Trim(c.Auth.KubernetesMount, "/")
	c.Auth.AppRoleMount = strings.Trim(c.Auth.AppRoleMount, "/")
	if c.Timeout <= 0 {
		c.Timeout = DefaultVaultTimeout
	}
	if c.KVPollInterval <= 0 {
		c.KVPollInterval = DefaultVaultKVPollInterval
	}
	if c.RefreshBuffer <= 0 {
		c.RefreshBuffer = DefaultVaultRefreshBuffer
	}
	if c.MinRefreshInterval <= 0 {
		c.MinRefreshInterval = DefaultVaultMinRefreshInterval
	}
	if c.RefreshBurst <= 0 {
		c.RefreshBurst = DefaultVaultRefreshBurst
	}
	return c
}

// check reports every problem in a defaulted configuration.
func (c VaultConfig) check() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Address == "" {
		add("vault source: address is required")
	}
	switch c.Mode {
	case VaultModeSign, VaultModeIssue:
		if c.PKIRole == "" {
			add("vault source: a PKI role is required in %s mode", c.Mode)
		}
		if c.CommonName == "" {
			add("vault source: a common name is required in %s mode", c.Mode)
		}
	case VaultModeKV:
		if m, p := splitKVPath(c.KVPath); m == "" || p == "" {
			add("vault source: KV path %q is not <mount>/<path>", c.KVPath)
		}
	default:
		add("vault source: mode %q is not one of sign, issue, kv", c.Mode)
	}
	switch c.Auth.Method {
	case VaultAuthToken:
		if c.Auth.Token == "" && c.Auth.TokenFile == "" {
			add("vault source: token authentication needs a token or a token file")
		}
	case VaultAuthKubernetes:
		if c.Auth.KubernetesRole == "" {
			add("vault source: kubernetes authentication needs a role")
		}
	case VaultAuthAppRole:
		if c.Auth.AppRoleRoleID == "" {
			add("vault source: approle authentication needs a role id")
		}
	default:
		add("vault source: auth method %q is not one of token, kubernetes, approle", c.Auth.Method)
	}
	return errors.Join(errs...)
}

// splitKVPath splits "mount/path" into the KV v2 mount (the first segment)
// and the secret path; the API form "mount/data/path" is accepted too.
func splitKVPath(p string) (mount, path string) {
	mount, path, _ = strings.Cut(strings.Trim(p, "/"), "/")
	if rest, ok := strings.CutPrefix(path, "data/"); ok {
		path = rest
	}
	return mount, path
}

// newVaultClient builds an API client from cfg alone. vault/api reads
// VAULT_* variables from the process environment when it builds a client;
// everything that matters (address, TLS, token, namespace, headers,
// retries) is set explicitly here so that only cfg counts.
func newVaultClient(cfg VaultConfig) (*api.Client, error) {
	tlsCfg := &cryptotls.Config{MinVersion: cryptotls.VersionTLS12}
	if cfg.CACert != "" {
		pem, err := readFile("Vault CA certificate", cfg.CACert)
		if err != nil {
			return nil, err
		}
		cas, err := parseCertificates(pem)
		if err != nil {
			return nil, fmt.Errorf("parse Vault CA certificate %s: %w", cfg.CACert, err)
		}
		tlsCfg.RootCAs = x509.NewCertPool()
		for _, c := range cas {
			tlsCfg.RootCAs.AddCert(c)
		}
	}
	transport := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		// A request every few seconds at most: a connection per request
		// costs nothing and leaves no idle connection behind.
		DisableKeepAlives: true,
	}
	client, err := api.NewClient(&api.Config{
		Address: cfg.Address,
		HttpClient: &http.Client{
			Transport: transport,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // vault/api handles redirects itself
			},
		},
		Timeout:    cfg.Timeout,
		MaxRetries: 0, // the source retries with its own backoff
	})
	if err != nil {
		return nil, fmt.Errorf("vault client for %s: %w", cfg.Address, err)
	}
	client.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})
	client.ClearToken()
	client.ClearNamespace()
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	return client, nil
}

// Current returns the bundle in use. It never blocks and does no I/O.
func (s *VaultSource) Current() (*Bundle, error) {
	if b := s.current.Load(); b != nil {
		return b, nil
	}
	return nil, ErrNoCertificate
}

// GetClientCertificate returns the certificate in use for crypto/tls. It only
// reads an atomic pointer and does not check validity.
func (s *VaultSource) GetClientCertificate(*cryptotls.CertificateRequestInfo) (*cryptotls.Certificate, error) {
	if b := s.current.Load(); b != nil {
		return &b.Certificate, nil
	}
	return nil, ErrNoCertificate
}

// Status reports the bundle in use, the refresh history and the Vault token
// history. It is safe for concurrent use and holds no secrets.
func (s *VaultSource) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status.clone()
}

// RefreshNow fetches a certificate from Vault synchronously and publishes it,
// then returns nil if the bundle in use is valid. Calls made while another
// attempt is running share its outcome instead of asking Vault again, and
// attempts are rate-limited, so dialers may call it whenever Current is
// missing or invalid (see Refresher). On failure the bundle in use is kept,
// the error (a *CertError naming the reason) is recorded in Status and Run
// retries with backoff. It returns ctx.Err() if ctx ends while waiting.
func (s *VaultSource) RefreshNow(ctx context.Context) error {
	return s.refreshAfter(ctx, s.attempts.Load())
}

// refreshAfter refreshes unless an attempt started after the caller read
// seen from attempts; in that case it returns that attempt's outcome.
func (s *VaultSource) refreshAfter(ctx context.Context, seen uint64) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	if s.attempts.Load() != seen {
		if b := s.current.Load(); b != nil && b.ValidAt(time.Now()) == nil {
			return nil
		}
		if s.lastErr != nil {
			return s.lastErr
		}
	}
	return s.refresh(ctx, "demand")
}

func (s *VaultSource) lock(ctx context.Context) error {
	select {
	case s.io <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *VaultSource) unlock() { <-s.io }

// Run refreshes the certificate ahead of expiry (or polls the KV secret) and
// renews the Vault token until ctx ends, then returns nil. If no certificate
// is held yet it fetches one at once. Failures are logged and recorded in
// Status, never returned. Call it once per source.
func (s *VaultSource) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		certDue, tokenDue := s.schedule()
		due := certDue
		if !tokenDue.IsZero() && tokenDue.Before(due) {
			due = tokenDue
		}
		timer.Reset(time.Until(due))
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
			continue
		case <-timer.C:
		}
		if err := s.lock(ctx); err != nil {
			return nil
		}
		certDue, tokenDue = s.schedule() // RefreshNow may have moved them
		now := time.Now()
		if !tokenDue.IsZero() && !now.Before(tokenDue) {
			s.maintainToken(ctx)
		}
		if !now.Before(certDue) {
			_ = s.refresh(ctx, "scheduled") // recorded in Status and logged
		}
		s.unlock()
	}
}

// schedule returns when the certificate and the token are next due. A
// source that never tried is due now.
func (s *VaultSource) schedule() (cert, token time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cert = s.status.NextRefresh
	if cert.IsZero() {
		cert = time.Now()
	}
	return cert, s.tokenDue
}

func (s *VaultSource) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// refresh makes one rate-limited attempt. The caller holds s.io.
func (s *VaultSource) refresh(ctx context.Context, trigger string) error {
	if err := s.limiter.Wait(ctx); err != nil {
		return fmt.Errorf("certificate refresh: %w", err)
	}
	s.attempts.Add(1)
	next, version, err := s.fetch(ctx)
	now := time.Now() // after the request: a certificate may start "now"
	if err == nil {
		err = s.publish(now, next, version, trigger)
	} else if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return err // shutting down: not a failure of Vault
	} else {
		s.fail(now, err, trigger)
	}
	s.lastErr = err
	return err
}

// fetch obtains a new, unpublished bundle. version is the KV version, or 0.
func (s *VaultSource) fetch(ctx context.Context) (*Bundle, int, error) {
	switch s.cfg.Mode {
	case VaultModeKV:
		return s.fetchKV(ctx)
	case VaultModeIssue:
		b, err := s.fetchPKI(ctx, "issue")
		return b, 0, err
	default:
		b, err := s.fetchPKI(ctx, "sign")
		return b, 0, err
	}
}

// publish swaps in next unless it is unacceptable, following the same rules
// as FileSource: identical content is a no-op; a bundle not valid now is
// refused while the one in use is valid. It schedules the next refresh.
func (s *VaultSource) publish(now time.Time, next *Bundle, version int, trigger string) error {
	old := s.current.Load()
	if old != nil && old.fingerprint == next.fingerprint {
		if err := old.ValidAt(now); err != nil {
			s.fail(now, err, trigger)
			return err
		}
		s.succeed(now, nil)
		return nil
	}
	validErr := next.ValidAt(now)
	if validErr != nil && old != nil && old.ValidAt(now) == nil {
		s.fail(now, validErr, trigger)
		return validErr
	}
	next.Generation = 1
	if old != nil {
		next.Generation = old.Generation + 1
	}
	due := s.succeed(now, next)
	fields := []zap.Field{
		zap.String("mode", s.cfg.Mode),
		zap.String("trigger", trigger),
		zap.Uint64("generation", next.Generation),
		zap.Time("next_refresh", due),
	}
	if version > 0 {
		fields = append(fields, zap.String("path", s.cfg.KVPath), zap.Int("kv_version", version))
	}
	if old == nil {
		s.log.Info("certificate loaded", append(fields,
			zap.String("serial", next.Serial),
			zap.Time("not_before", next.NotBefore),
			zap.Time("not_after", next.NotAfter))...)
	} else {
		s.log.Info("certificate rotated", append(fields,
			zap.String("old_serial", old.Serial),
			zap.String("new_serial", next.Serial),
			zap.Time("old_not_after", old.NotAfter),
			zap.Time("new_not_after", next.NotAfter))...)
	}
	if validErr != nil {
		s.fail(now, validErr, trigger)
		s.log.Warn("certificate not valid", zap.String("serial", next.Serial),
			zap.String("reason", reasonOf(validErr)),
			zap.Time("not_before", next.NotBefore), zap.Time("not_after", next.NotAfter))
	}
	return validErr
}

// succeed records a successful attempt, publishes next if not nil, and
// schedules the next refresh, which it returns. The caller holds s.io.
func (s *VaultSource) succeed(now time.Time, next *Bundle) time.Time {
	s.failStreak = 0
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.status
	st.LastAttempt = now
	st.LastError, st.LastErrorReason = "", ""
	if next != nil {
		if s.current.Swap(next) != nil {
			st.Rotations++
		}
		st.Serial, st.NotBefore, st.NotAfter = next.Serial, next.NotBefore, next.NotAfter
		st.Generation = next.Generation
		s.fetchedAt = now
	}
	jitter := rand.Float64()*2 - 1
	if s.cfg.Mode == VaultModeKV {
		st.NextRefresh = now.Add(kvPollDelay(now, st.NotAfter, s.cfg.KVPollInterval))
	} else {
		st.NextRefresh = refreshAt(now, st.NotAfter, s.cfg.RefreshBuffer, jitter)
	}
	s.poke()
	return st.NextRefresh
}

// fail records a failed attempt and schedules a retry with backoff. The
// caller holds s.io.
func (s *VaultSource) fail(now time.Time, err error, trigger string) {
	s.failStreak++
	reason := reasonOf(err)
	s.mu.Lock()
	st := &s.status
	st.LastAttempt = now
	st.LastError, st.LastErrorReason = err.Error(), reason
	st.countFailure(reason)
	lifetime := s.cfg.TTL
	if !st.NotAfter.IsZero() && !s.fetchedAt.IsZero() {
		lifetime = st.NotAfter.Sub(s.fetchedAt)
	}
	retry := retryDelay(s.failStreak, lifetime, rand.Float64()*2-1)
	st.NextRefresh = now.Add(retry)
	serial, notAfter := st.Serial, st.NotAfter
	s.mu.Unlock()
	s.poke()
	fields := []zap.Field{
		zap.String("mode", s.cfg.Mode),
		zap.String("trigger", trigger),
		zap.String("reason", reason),
		zap.Int("consecutive_failures", s.failStreak),
		zap.Duration("retry_in", retry),
		zap.Error(err),
	}
	if serial != "" {
		fields = append(fields, zap.String("serial", serial), zap.Time("not_after", notAfter))
	}
	s.log.Warn("certificate refresh failed", fields...)
}

// noteToken records a token event in Status under s.mu.
func (s *VaultSource) noteToken(f func(st *Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.status)
}

func (s *VaultSource) setTokenDue(t time.Time) {
	s.mu.Lock()
	s.tokenDue = t
	s.mu.Unlock()
	s.poke()
}

// readSecretFile reads a credential file for a login. Its errors name the
// file, never its content.
func readSecretFile(what, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", &CertError{Reason: ReasonLogin, path: path, err: err,
			Msg: fmt.Sprintf("read %s %s: %v", what, path, errors.Unwrap(err))}
	}
	v := strings.TrimSpace(string(data))
	if v == "" {
		return "", &CertError{Reason: ReasonLogin, path: path, Msg: fmt.Sprintf("%s %s is empty", what, path)}
	}
	return v, nil
}
