package vaulttest

import (
	"bytes"
	"crypto"
	"crypto/rand"
	cryptotls "crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Config describes the Vault a Server pretends to be. Zero fields select
// the defaults documented on each.
type Config struct {
	// CACert and CAKey sign every certificate the PKI engine issues;
	// required. Tests usually pass the CA that their Postgres trusts.
	CACert *x509.Certificate
	CAKey  crypto.Signer
	// PKIMount is the PKI secrets engine mount. Default "pki".
	PKIMount string
	// Roles are the PKI roles that exist. Default ["brownie"].
	Roles []string
	// MaxTTL is the roles' max_ttl: longer requested TTLs are capped, with
	// a warning, as Vault does. Default 24h.
	MaxTTL time.Duration
	// DefaultTTL is used when a request has no ttl. Default 1h (capped at
	// MaxTTL).
	DefaultTTL time.Duration
	// KVMount is the KV v2 mount. Default "secret".
	KVMount string
	// Namespace, when set, must be sent in X-Vault-Namespace by every
	// request; other requests find no route (404).
	Namespace string
	// TLS serves HTTPS with a certificate for 127.0.0.1 and localhost
	// signed by CA (see CACertFile).
	TLS bool

	// KubernetesMount (default "kubernetes"), KubernetesRole (default
	// "brownie-sidecar") and KubernetesJWTs (the service-account tokens
	// accepted) configure the Kubernetes auth method.
	KubernetesMount, KubernetesRole string
	KubernetesJWTs                  []string
	// AppRoleMount (default "approle"), AppRoleRoleID and AppRoleSecretIDs
	// (accepted secret ids; empty means bind_secret_id=false) configure
	// AppRole.
	AppRoleMount, AppRoleRoleID string
	AppRoleSecretIDs            []string

	// LoginTTL is the lease of tokens created by logins. Default 1h.
	LoginTTL time.Duration
	// LoginMaxTTL bounds renewals of login tokens, counted from creation;
	// zero means no bound.
	LoginMaxTTL time.Duration
	// LoginNonRenewable makes login tokens non-renewable.
	LoginNonRenewable bool
}

// TokenOptions describe a token created with Server.CreateToken.
type TokenOptions struct {
	// TTL is the lease; zero never expires (like a root token).
	TTL time.Duration
	// MaxTTL bounds renewals, counted from creation; zero means no bound.
	MaxTTL time.Duration
	// Renewable allows renew-self.
	Renewable bool
}

// Stats counts requests by kind. Maps are copies.
type Stats struct {
	Requests int
	// Logins and LoginFailures are keyed by method: "kubernetes",
	// "approle".
	Logins, LoginFailures map[string]int
	Renewals              int
	RenewFailures         int
	LookupSelf            int
	Signs, Issues         int
	KVReads               int
	// Denied counts 403 responses.
	Denied int
	// Unavailable counts 503 responses while sealed.
	Unavailable int
}

// Request is one request as the server saw it. It holds no token.
type Request struct {
	Method, Path, Namespace string
	HadToken                bool
	Status                  int
}

// Server is a running fake Vault. It is safe for concurrent use.
type Server struct {
	tb     testing.TB
	cfg    Config
	tlsCfg *cryptotls.Config
	caFile string
	caPEM  string // CACert in PEM, without the trailing newline, as Vault returns it

	lifecycle sync.Mutex // serialises Stop and Restart
	mu        sync.Mutex // guards everything below
	hs        *httptest.Server
	addr      string
	sealed    bool
	tokens    map[string]*token
	kv        map[string]*kvSecret
	jwts      map[string]bool
	secretIDs map[string]bool
	stats     Stats
	issued    []Issued
	violation []string
	requests  []Request
}

type token struct {
	accessor   string
	policies   []string
	created    time.Time
	creatTTL   time.Duration
	expires    time.Time // zero: never
	maxExpires time.Time // zero: no bound
	renewable  bool
	path       string
}

type kvSecret struct {
	data    map[string]any
	version int
	created time.Time
}

// Start runs a server described by cfg on a loopback port and stops it when
// the test ends. It fails the test if cfg.CA is missing or the listener
// cannot be opened.
func Start(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	if cfg.CACert == nil || cfg.CAKey == nil {
		tb.Fatal("vaulttest: Config.CACert and Config.CAKey are required")
	}
	if cfg.PKIMount == "" {
		cfg.PKIMount = "pki"
	}
	if len(cfg.Roles) == 0 {
		cfg.Roles = []string{"brownie"}
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 24 * time.Hour
	}
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = time.Hour
	}
	cfg.DefaultTTL = min(cfg.DefaultTTL, cfg.MaxTTL)
	if cfg.KVMount == "" {
		cfg.KVMount = "secret"
	}
	if cfg.KubernetesMount == "" {
		cfg.KubernetesMount = "kubernetes"
	}
	if cfg.KubernetesRole == "" {
		cfg.KubernetesRole = "brownie-sidecar"
	}
	if cfg.AppRoleMount == "" {
		cfg.AppRoleMount = "approle"
	}
	if cfg.LoginTTL <= 0 {
		cfg.LoginTTL = time.Hour
	}
	cfg.Namespace = strings.Trim(cfg.Namespace, "/")
	s := &Server{
		tb: tb, cfg: cfg,
		tokens:    map[string]*token{},
		kv:        map[string]*kvSecret{},
		jwts:      map[string]bool{},
		secretIDs: map[string]bool{},
		stats:     Stats{Logins: map[string]int{}, LoginFailures: map[string]int{}},
	}
	s.SetKubernetesJWTs(cfg.KubernetesJWTs...)
	s.SetAppRoleSecretIDs(cfg.AppRoleSecretIDs...)

	s.caPEM = strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cfg.CACert.Raw})))
	s.caFile = filepath.Join(tb.TempDir(), "vault-ca.crt")
	if err := os.WriteFile(s.caFile, []byte(s.caPEM+"\n"), 0o644); err != nil {
		tb.Fatalf("vaulttest: %v", err)
	}
	if cfg.TLS {
		pair, err := s.serverCertificate()
		if err != nil {
			tb.Fatalf("vaulttest: server certificate: %v", err)
		}
		s.tlsCfg = &cryptotls.Config{Certificates: []cryptotls.Certificate{pair}, MinVersion: cryptotls.VersionTLS12}
	}
	if err := s.listen("127.0.0.1:0"); err != nil {
		tb.Fatalf("vaulttest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// listen opens addr and serves on it.
func (s *Server) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	hs := httptest.NewUnstartedServer(s)
	hs.Listener.Close()
	hs.Listener = ln
	hs.Config.ReadHeaderTimeout = 10 * time.Second
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake failures are expected in some tests
	if s.tlsCfg != nil {
		hs.TLS = s.tlsCfg
		hs.StartTLS()
	} else {
		hs.Start()
	}
	s.mu.Lock()
	s.hs, s.addr = hs, ln.Addr().String()
	s.mu.Unlock()
	return nil
}

// URL is the server's base URL, such as http://127.0.0.1:41234, for
// VAULT_ADDR. It stays the same across Stop and Restart.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	scheme := "http"
	if s.tlsCfg != nil {
		scheme = "https"
	}
	return scheme + "://" + s.addr
}

// CACertFile is a PEM file holding the test CA, for VAULT_CACERT (with
// Config.TLS) or as the upstream CA.
func (s *Server) CACertFile() string { return s.caFile }

// Stop closes the listener and every connection, so clients get
// "connection refused" until Restart. It waits for requests in progress.
// It is idempotent.
func (s *Server) Stop() {
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.mu.Lock()
	hs := s.hs
	s.hs = nil
	s.mu.Unlock()
	if hs != nil {
		hs.Close()
	}
}

// Restart listens again on the address used before Stop. It fails the test
// if the port cannot be reopened within 10s. It is a no-op while running.
func (s *Server) Restart() {
	s.tb.Helper()
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.mu.Lock()
	running, addr := s.hs != nil, s.addr
	s.mu.Unlock()
	if running {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.listen(addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("vaulttest: restart on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond) // the port is briefly busy
	}
}

// SetSealed makes every request fail with 503 {"errors":["Vault is sealed"]}
// while sealed is true.
func (s *Server) SetSealed(sealed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sealed = sealed
}

// CreateToken adds a token and returns it.
func (s *Server) CreateToken(opts TokenOptions) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newTokenLocked(time.Now(), opts.TTL, opts.MaxTTL, opts.Renewable, "auth/token/create", []string{"root"})
}

// RevokeTokens revokes every token, as if they had all expired: the next
// request with any of them gets 403 permission denied.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// SetKubernetesJWTs replaces the service-account tokens the Kubernetes login
// accepts.
func (s *Server) SetKubernetesJWTs(jwts ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.jwts)
	for _, j := range jwts {
		s.jwts[j] = true
	}
}

// SetAppRoleSecretIDs replaces the secret ids the AppRole login accepts; none
// means the role does not require one.
func (s *Server) SetAppRoleSecretIDs(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.secretIDs)
	for _, id := range ids {
		s.secretIDs[id] = true
	}
}

// PutKV writes a new version of the KV v2 secret at path (relative to the
// mount) and returns its version number.
func (s *Server) PutKV(path string, data map[string]any) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	path = strings.Trim(path, "/")
	v := 1
	if old := s.kv[path]; old != nil {
		v = old.version + 1
	}
	s.kv[path] = &kvSecret{data: maps.Clone(data), version: v, created: time.Now().UTC()}
	return v
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Logins = maps.Clone(s.stats.Logins)
	st.LoginFailures = maps.Clone(s.stats.LoginFailures)
	return st
}

// Issued returns every certificate issued so far, oldest first.
func (s *Server) Issued() []Issued {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.issued)
}

// Violations returns the protocol violations seen, such as a private key in
// a sign request. A correct client causes none.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.violation)
}

// Requests returns every request seen, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// vaultError is an error response: Vault's {"errors":[...]} with a status.
type vaultError struct {
	status int
	msgs   []string
}

func fail(status int, msgs ...string) *vaultError {
	if msgs == nil {
		msgs = []string{}
	}
	return &vaultError{status: status, msgs: msgs}
}

var errDenied = fail(http.StatusForbidden, "permission denied")

// ServeHTTP routes one request. Every request is handled under the server
// lock, so the state and counters are consistent.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, readErr := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	rec := Request{
		Method: r.Method, Path: r.URL.Path,
		Namespace: r.Header.Get("X-Vault-Namespace"),
		HadToken:  r.Header.Get("X-Vault-Token") != "",
	}
	status, resp := s.route(r, body, readErr)
	rec.Status = status
	s.requests = append(s.requests, rec)
	if status == http.StatusForbidden {
		s.stats.Denied++
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(resp)
}

func (s *Server) route(r *http.Request, body []byte, readErr error) (int, any) {
	ok, verr := s.dispatch(r, body, readErr)
	if verr != nil {
		return verr.status, map[string]any{"errors": verr.msgs}
	}
	return http.StatusOK, ok
}

func (s *Server) dispatch(r *http.Request, body []byte, readErr error) (any, *vaultError) {
	if s.sealed {
		s.stats.Unavailable++
		return nil, fail(http.StatusServiceUnavailable, "Vault is sealed")
	}
	path, found := strings.CutPrefix(r.URL.Path, "/v1/")
	if !found {
		return nil, fail(http.StatusNotFound)
	}
	noRoute := fail(http.StatusNotFound, fmt.Sprintf("no handler for route %q. route entry not found.", path))
	if s.cfg.Namespace != "" && strings.Trim(r.Header.Get("X-Vault-Namespace"), "/") != s.cfg.Namespace {
		return nil, noRoute
	}
	if readErr != nil {
		return nil, fail(http.StatusBadRequest, "failed to read request body")
	}
	write := r.Method == http.MethodPut || r.Method == http.MethodPost
	var req map[string]any
	if write && len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&req); err != nil {
			return nil, fail(http.StatusBadRequest, "failed to parse JSON input: "+err.Error())
		}
	}
	unsupported := fail(http.StatusMethodNotAllowed, "unsupported operation")

	switch {
	case path == "auth/token/lookup-self":
		if r.Method != http.MethodGet && !write {
			return nil, unsupported
		}
		return s.lookupSelf(r)
	case path == "auth/token/renew-self":
		if !write {
			return nil, unsupported
		}
		return s.renewSelf(r, req)
	case path == "auth/"+s.cfg.KubernetesMount+"/login":
		if !write {
			return nil, unsupported
		}
		return s.kubernetesLogin(req)
	case path == "auth/"+s.cfg.AppRoleMount+"/login":
		if !write {
			return nil, unsupported
		}
		return s.appRoleLogin(req)
	}
	if rest, ok := strings.CutPrefix(path, s.cfg.PKIMount+"/"); ok {
		op, role, _ := strings.Cut(rest, "/")
		if (op == "sign" || op == "issue") && role != "" && !strings.Contains(role, "/") {
			if !write {
				return nil, unsupported
			}
			if _, err := s.authenticate(r); err != nil {
				return nil, err
			}
			return s.pki(op, role, path, req, body)
		}
	}
	if rest, ok := strings.CutPrefix(path, s.cfg.KVMount+"/data/"); ok && rest != "" {
		if r.Method != http.MethodGet {
			return nil, unsupported
		}
		if _, err := s.authenticate(r); err != nil {
			return nil, err
		}
		return s.kvRead(rest)
	}
	return nil, noRoute
}

// authenticate returns the live token of r, or 403.
func (s *Server) authenticate(r *http.Request) (string, *vaultError) {
	id := r.Header.Get("X-Vault-Token")
	if id == "" {
		if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			id = v
		}
	}
	t := s.tokens[id]
	if id == "" || t == nil {
		return "", errDenied
	}
	if !t.expires.IsZero() && !time.Now().Before(t.expires) {
		delete(s.tokens, id)
		return "", errDenied
	}
	return id, nil
}

// envelope is Vault's response shape for secrets and logins.
func envelope(data map[string]any, auth map[string]any, warnings []string, mountType string) map[string]any {
	resp := map[string]any{
		"request_id":     requestID(),
		"lease_id":       "",
		"renewable":      false,
		"lease_duration": 0,
		"data":           nil,
		"wrap_info":      nil,
		"warnings":       nil,
		"auth":           nil,
		"mount_type":     mountType,
	}
	if data != nil {
		resp["data"] = data
	}
	if auth != nil {
		resp["auth"] = auth
	}
	if len(warnings) > 0 {
		resp["warnings"] = warnings
	}
	return resp
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// randomString returns n random characters from Vault's token alphabet.
func randomString(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// str returns req[key] as a string ("" if absent or not a string).
func str(req map[string]any, key string) string {
	v, _ := req[key].(string)
	return v
}

// seconds parses a Vault duration: a number of seconds, or a string that is
// either a number of seconds or a Go duration ("20s", "1h").
func seconds(v any) (time.Duration, error) {
	switch x := v.(type) {
	case nil:
		return 0, nil
	case json.Number:
		n, err := x.Int64()
		return time.Duration(n) * time.Second, err
	case string:
		if x == "" {
			return 0, nil
		}
		if n, err := json.Number(x).Int64(); err == nil {
			return time.Duration(n) * time.Second, nil
		}
		return time.ParseDuration(x)
	}
	return 0, errors.New("not a duration")
}
