package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/brownie/brownie-sidecar/internal/vaulttest"
)

// ---- Refresh-time math (pure functions, no clock) ----

func TestRefreshIsDueAtHalfTheRemainingLifetimeWithTenPercentJitter(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		lifetime, buffer time.Duration
		jitter           float64
		want             time.Duration
	}{
		{time.Hour, 5 * time.Minute, 0, 30 * time.Minute},
		{time.Hour, 5 * time.Minute, 1, 33 * time.Minute},
		{time.Hour, 5 * time.Minute, -1, 27 * time.Minute},
		{time.Hour, 5 * time.Minute, 7, 33 * time.Minute}, // jitter is clamped to [-1, 1]
		{24 * time.Hour, 5 * time.Minute, 0, 12 * time.Hour},
		{10 * time.Minute, 5 * time.Minute, 0, 5 * time.Minute}, // half and buffer coincide
	} {
		got := refreshAt(t0, t0.Add(tc.lifetime), tc.buffer, tc.jitter).Sub(t0)
		if got != tc.want {
			t.Errorf("lifetime %s buffer %s jitter %v: refresh after %s, want %s", tc.lifetime, tc.buffer, tc.jitter, got, tc.want)
		}
	}
}

func TestRefreshIsNeverLaterThanTheBufferBeforeNotAfter(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	// An 8m certificate with a 5m buffer: half would be 4m, the buffer says
	// 3m; jitter only moves it earlier.
	na := t0.Add(8 * time.Minute)
	for _, j := range []float64{-1, -0.5, 0, 0.5, 1} {
		got := refreshAt(t0, na, 5*time.Minute, j)
		if got.After(na.Add(-5*time.Minute)) || got.Before(t0.Add(3*time.Minute-18*time.Second)) {
			t.Errorf("jitter %v: refresh at +%s, want within [2m42s, 3m]", j, got.Sub(t0))
		}
	}
	// Property over random lifetimes, buffers and jitters.
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		lifetime := time.Duration(r.Int64N(int64(48*time.Hour))) + time.Second
		buffer := time.Duration(r.Int64N(int64(time.Hour)))
		got := refreshAt(t0, t0.Add(lifetime), buffer, r.Float64()*2-1)
		latest := t0.Add(lifetime - effectiveBuffer(lifetime, buffer))
		if got.Before(t0) || got.After(latest) || got.After(t0.Add(lifetime*55/100+1)) {
			t.Fatalf("lifetime %s buffer %s: refresh at +%s, latest +%s", lifetime, buffer, got.Sub(t0), latest.Sub(t0))
		}
	}
}

func TestShortLivedCertificatesAreUsedForAtLeastAThirdOfTheirLife(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		lifetime time.Duration
		min, max time.Duration
	}{
		// 20s with the default 5m buffer: the buffer is cut to 2/3 of the
		// lifetime, so the refresh is due after 6.67s minus jitter.
		{20 * time.Second, 6 * time.Second, 6667 * time.Millisecond},
		{3 * time.Second, 900 * time.Millisecond, time.Second},
	} {
		for _, j := range []float64{-1, 0, 1} {
			got := refreshAt(t0, t0.Add(tc.lifetime), DefaultVaultRefreshBuffer, j).Sub(t0)
			if got < tc.min || got > tc.max {
				t.Errorf("lifetime %s jitter %v: refresh after %s, want [%s, %s]", tc.lifetime, j, got, tc.min, tc.max)
			}
		}
	}
	if got := effectiveBuffer(20*time.Second, 5*time.Minute); got != 13333333333 {
		t.Errorf("effective buffer for 20s = %s", got)
	}
	if got := effectiveBuffer(time.Hour, 5*time.Minute); got != 5*time.Minute {
		t.Errorf("effective buffer for 1h = %s", got)
	}
}

func TestAnExpiredCertificateIsDueAtOnce(t *testing.T) {
	t0 := time.Now()
	if got := refreshAt(t0, t0.Add(-time.Second), time.Minute, 1); !got.Equal(t0) {
		t.Errorf("refresh at %s, want now", got.Sub(t0))
	}
}

func TestRetryBackoffDoublesUpToACapThatShrinksForShortLifetimes(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		lifetime time.Duration
		want     []time.Duration // for failures 1, 2, 3...
	}{
		{0, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s, 30 * s}},
		{time.Hour, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s}},
		{20 * s, []time.Duration{s, 2 * s, 4 * s, 5 * s, 5 * s}},
		{2 * s, []time.Duration{s, s, s}},
	} {
		for i, want := range tc.want {
			if got := retryDelay(i+1, tc.lifetime, 0); got != want {
				t.Errorf("lifetime %s failure %d: %s, want %s", tc.lifetime, i+1, got, want)
			}
		}
	}
	for _, j := range []float64{-1, 1} {
		got := retryDelay(100, 0, j)
		if want := 30*s + time.Duration(j*3)*s; got != want {
			t.Errorf("jitter %v: %s, want %s", j, got, want)
		}
	}
}

func TestKVPollingSpeedsUpAsTheCertificateNearsItsEnd(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		notAfter time.Time
		want     time.Duration
	}{
		{time.Time{}, time.Minute},
		{now.Add(time.Hour), time.Minute},
		{now.Add(time.Minute), 30 * time.Second},
		{now.Add(time.Second), time.Second},
		{now.Add(-time.Hour), time.Second},
	} {
		if got := kvPollDelay(now, tc.notAfter, time.Minute); got != tc.want {
			t.Errorf("not after %v: poll in %s, want %s", tc.notAfter.Sub(now), got, tc.want)
		}
	}
}

func TestTokensAreMaintainedAtTwoThirdsOfTheirLease(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := tokenRenewAt(t0, 30*time.Second, 0).Sub(t0); got != 20*time.Second {
		t.Errorf("renew after %s, want 20s", got)
	}
	if got := tokenRenewAt(t0, 30*time.Second, 1).Sub(t0); got != 22*time.Second {
		t.Errorf("renew after %s with jitter, want 22s", got)
	}
	if got := tokenRenewAt(t0, 0, 0); !got.IsZero() {
		t.Errorf("a token without expiry is maintained at %v", got)
	}
}

func TestKVPathsSplitIntoMountAndSecret(t *testing.T) {
	for in, want := range map[string][2]string{
		"secret/brownie-metadata/certs":       {"secret", "brownie-metadata/certs"},
		"/secret/data/brownie-metadata/certs": {"secret", "brownie-metadata/certs"},
		"kv/x":                                {"kv", "x"},
		"secret/app/data/certs":               {"secret", "app/data/certs"},
		"nomount":                             {"nomount", ""},
	} {
		if m, p := splitKVPath(in); m != want[0] || p != want[1] {
			t.Errorf("%q: %q %q, want %q", in, m, p, want)
		}
	}
}

// ---- Against the Vault-API-compatible test server ----

const testCN = "brownie-fastapi-server"

// testVault starts a fake Vault whose PKI is a fresh CA, with a static
// token, after mod adjusts its configuration.
func testVault(t *testing.T, mod func(*vaulttest.Config)) (*vaulttest.Server, *CA, string) {
	t.Helper()
	ca := testCA(t)
	cfg := vaulttest.Config{CACert: ca.Cert, CAKey: ca.Key}
	if mod != nil {
		mod(&cfg)
	}
	v := vaulttest.Start(t, cfg)
	return v, ca, v.CreateToken(vaulttest.TokenOptions{})
}

// newTestVaultSource builds a source for v; mod adjusts its configuration.
func newTestVaultSource(t *testing.T, v *vaulttest.Server, token string, mod func(*VaultConfig)) (*VaultSource, *observer.ObservedLogs) {
	t.Helper()
	cfg := VaultConfig{
		Address: v.URL(), PKIRole: "brownie", CommonName: testCN, TTL: time.Hour,
		Auth:               VaultAuth{Token: token},
		MinRefreshInterval: 10 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	log, logs := observedLogger()
	s, err := NewVaultSource(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

func refreshNow(t *testing.T, s *VaultSource) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.RefreshNow(ctx); err != nil {
		t.Fatalf("RefreshNow: %v", err)
	}
}

func mustCurrent(t *testing.T, s Source) *Bundle {
	t.Helper()
	b, err := s.Current()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignModeSendsOnlyACSRAndServesAMatchingP256Pair(t *testing.T) {
	v, ca, tok := testVault(t, nil)
	s, logs := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.TTL = 90 * time.Second })
	if _, err := s.Current(); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("Current before the first refresh: %v", err)
	}
	refreshNow(t, s)

	b := mustCurrent(t, s)
	if b.Leaf.Subject.CommonName != testCN || b.Generation != 1 {
		t.Fatalf("CN %q generation %d", b.Leaf.Subject.CommonName, b.Generation)
	}
	key, ok := b.Certificate.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() || !publicKeysMatch(b.Leaf, key) {
		t.Fatalf("key %T does not match or is not P-256", b.Certificate.PrivateKey)
	}
	if got := time.Until(b.NotAfter); got < 80*time.Second || got > 91*time.Second {
		t.Errorf("lifetime %s, want the requested 90s", got)
	}
	if len(b.Certificate.Certificate) != 1 {
		t.Errorf("chain has %d certificates; the self-signed root must not be sent", len(b.Certificate.Certificate))
	}
	// Roots come from issuing_ca/ca_chain and verify servers from that CA.
	srvPEM, _, err := ca.Issue(LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	srvCert, _ := parseCertificates(srvPEM)
	if _, err := srvCert[0].Verify(x509.VerifyOptions{Roots: b.Roots, DNSName: "localhost"}); err != nil {
		t.Errorf("roots do not verify a server certificate from the Vault CA: %v", err)
	}
	if issued := v.Issued(); len(issued) != 1 || issued[0].Op != "sign" || issued[0].Serial.Text(16) != b.Serial {
		t.Errorf("issued %+v, serving %s", issued, b.Serial)
	}
	if vs := v.Violations(); len(vs) != 0 {
		t.Errorf("sign mode violations: %v", vs)
	}
	st := s.Status()
	if st.Source != "vault" || st.AuthMethod != "token" || st.Serial != b.Serial || st.Logins != 1 ||
		st.Failures != 0 || time.Until(st.NextRefresh) < 25*time.Second || time.Until(st.NextRefresh) > 31*time.Second {
		t.Errorf("status %+v", st)
	}
	if got := logs.FilterMessage("certificate loaded").Len(); got != 1 {
		t.Errorf("%d \"certificate loaded\" entries", got)
	}
}

func TestIssueModeServesTheKeyVaultReturns(t *testing.T) {
	v, _, tok := testVault(t, nil)
	s, _ := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.Mode = VaultModeIssue })
	refreshNow(t, s)
	b := mustCurrent(t, s)
	if issued := v.Issued(); len(issued) != 1 || issued[0].Op != "issue" || issued[0].Serial.Text(16) != b.Serial {
		t.Fatalf("issued %+v", issued)
	}
	if _, ok := b.Certificate.PrivateKey.(*ecdsa.PrivateKey); !ok {
		t.Fatalf("key %T", b.Certificate.PrivateKey)
	}
}

func TestRunRotatesBeforeExpiryWithGenerationsGrowingByOne(t *testing.T) {
	v, _, tok := testVault(t, nil)
	s, logs := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.TTL = 3 * time.Second })

	// Readers race with the swaps (run under -race).
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var last uint64
		for !stop.Load() {
			if b, err := s.Current(); err == nil {
				if b.Generation < last {
					t.Errorf("generation went back from %d to %d", last, b.Generation)
				}
				last = b.Generation
				if c, _ := s.GetClientCertificate(nil); c == nil {
					t.Error("no certificate for the handshake")
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop.Store(true); wg.Wait() })

	runSource(t, s)
	eventually(t, 20*time.Second, func() bool {
		return s.Status().Generation >= 4 && logs.FilterMessage("certificate rotated").Len() >= 3
	})
	st := s.Status()
	if st.Rotations != st.Generation-1 || st.Failures != 0 {
		t.Fatalf("status %+v", st)
	}
	rotated := logs.FilterMessage("certificate rotated").All()
	if len(rotated) < 3 {
		t.Fatalf("%d rotations logged", len(rotated))
	}
	for _, e := range rotated {
		// Each replacement is planned well before its predecessor's end
		// (a third of a 3s lifetime); when it actually runs depends on
		// how busy the machine is, so the plan is what is checked.
		f := e.ContextMap()
		next, notAfter := f["next_refresh"].(time.Time), f["new_not_after"].(time.Time)
		if !next.Before(notAfter.Add(-500 * time.Millisecond)) {
			t.Errorf("refresh planned at %s for a certificate that expires at %s", next, notAfter)
		}
		if f["old_serial"] == f["new_serial"] {
			t.Errorf("rotation kept serial %v", f["old_serial"])
		}
	}
	if got := len(v.Issued()); uint64(got) != st.Generation {
		t.Errorf("%d certificates issued for generation %d", got, st.Generation)
	}
}

func TestAFailedRefreshKeepsTheCertificateAndRetriesWithBackoff(t *testing.T) {
	v, _, tok := testVault(t, nil)
	s, logs := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.TTL = 8 * time.Second })
	refreshNow(t, s)
	first := mustCurrent(t, s)

	v.SetSealed(true)
	err := s.RefreshNow(context.Background())
	var ce *CertError
	if !errors.As(err, &ce) || ce.Reason != ReasonVaultUnavailable || !strings.Contains(err.Error(), "Vault is sealed") {
		t.Fatalf("RefreshNow while sealed: %v", err)
	}
	if mustCurrent(t, s) != first {
		t.Fatal("a failed refresh replaced the certificate")
	}
	st := s.Status()
	if st.LastErrorReason != ReasonVaultUnavailable || st.FailuresByReason[ReasonVaultUnavailable] != 1 ||
		time.Until(st.NextRefresh) > 2*time.Second {
		t.Fatalf("status after failure %+v", st)
	}
	if e := logs.FilterMessage("certificate refresh failed").All(); len(e) != 1 || e[0].ContextMap()["reason"] != ReasonVaultUnavailable {
		t.Fatalf("log entries %v", e)
	}

	runSource(t, s)
	eventually(t, 15*time.Second, func() bool { return s.Status().Failures >= 3 })
	v.SetSealed(false)
	eventually(t, 15*time.Second, func() bool { return s.Status().Generation == 2 })
	if st := s.Status(); st.LastError != "" || st.LastErrorReason != "" {
		t.Fatalf("error not cleared after recovery: %+v", st)
	}
	// Retries backed off: 1s, 2s, then capped at a quarter of the
	// lifetime (just under 8s, NotAfter having whole seconds), ±10%.
	attempts := logs.FilterMessage("certificate refresh failed").All()
	for i, e := range attempts {
		retry := e.ContextMap()["retry_in"].(time.Duration)
		if retry > 2200*time.Millisecond || (i == 1 && retry < 1500*time.Millisecond) {
			t.Errorf("attempt %d: retry in %s", i+1, retry)
		}
	}
}

func TestVaultFailuresAreClassifiedByReason(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, v *vaulttest.Server, c *VaultConfig)
		reason string
		msg    string
	}{
		{"sealed", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) { v.SetSealed(true) },
			ReasonVaultUnavailable, "503 Vault is sealed"},
		{"stopped", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) { v.Stop() },
			ReasonVaultUnreachable, "connection refused"},
		{"unknown role", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) { c.PKIRole = "nope" },
			ReasonVaultRejected, "400 unknown role: nope"},
		{"missing KV secret", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) { c.Mode = VaultModeKV },
			ReasonNotFound, "secret/data/brownie-metadata/certs"},
		{"revoked static token", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) { v.RevokeTokens() },
			ReasonLogin, "403 permission denied"},
		{"wrong kubernetes role", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) {
			c.Auth = VaultAuth{Method: VaultAuthKubernetes, KubernetesRole: "other",
				KubernetesTokenFile: writeSecret(t, "jwt-1")}
		}, ReasonLogin, `invalid role name "other"`},
		{"missing JWT file", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) {
			c.Auth = VaultAuth{Method: VaultAuthKubernetes, KubernetesRole: "brownie-sidecar",
				KubernetesTokenFile: filepath.Join(t.TempDir(), "absent")}
		}, ReasonLogin, "no such file"},
		{"missing upstream CA file", func(t *testing.T, v *vaulttest.Server, c *VaultConfig) {
			c.UpstreamCAFile = filepath.Join(t.TempDir(), "ca.crt")
		}, ReasonRead, "upstream CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _, tok := testVault(t, func(c *vaulttest.Config) { c.KubernetesJWTs = []string{"jwt-1"} })
			cfg := VaultConfig{}
			s, _ := newTestVaultSource(t, v, tok, func(c *VaultConfig) {
				tc.setup(t, v, c)
				cfg = *c
			})
			err := s.RefreshNow(context.Background())
			var ce *CertError
			if !errors.As(err, &ce) || ce.Reason != tc.reason || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v (%T), want reason %s mentioning %q", err, err, tc.reason, tc.msg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			if st := s.Status(); st.LastErrorReason != tc.reason || st.FailuresByReason[tc.reason] != 1 {
				t.Errorf("status %+v", st)
			}
			if strings.Contains(err.Error(), tok) || (cfg.Auth.Token != "" && strings.Contains(err.Error(), cfg.Auth.Token)) {
				t.Errorf("error names the token: %v", err)
			}
		})
	}
}

// writeSecret writes a credential file and returns its path.
func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := WriteFileAtomic(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestA403LogsInAgainByRereadingTheTokenFile(t *testing.T) {
	v, _, tokA := testVault(t, nil)
	file := writeSecret(t, tokA)
	s, _ := newTestVaultSource(t, v, "", func(c *VaultConfig) { c.Auth = VaultAuth{TokenFile: file} })
	refreshNow(t, s)

	v.RevokeTokens() // token A is gone; Vault Agent writes token B
	tokB := v.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, Renewable: true})
	if err := WriteFileAtomic(file, []byte(tokB), 0o600); err != nil {
		t.Fatal(err)
	}
	refreshNow(t, s)
	if st := s.Status(); st.Logins != 2 || st.LoginFailures != 0 || st.Generation != 2 || st.Failures != 0 {
		t.Fatalf("status %+v", st)
	}
	if st := v.Stats(); st.LookupSelf != 2 || st.Signs != 2 || st.Denied != 1 {
		t.Fatalf("server stats %+v", st)
	}
}

func TestKubernetesLoginRenewsUntilTheMaxTTLThenLogsInWithTheCurrentJWT(t *testing.T) {
	v, _, _ := testVault(t, func(c *vaulttest.Config) {
		c.KubernetesJWTs = []string{"jwt-1"}
		c.LoginTTL, c.LoginMaxTTL = 2*time.Second, 4*time.Second
	})
	jwtFile := writeSecret(t, "jwt-1")
	s, logs := newTestVaultSource(t, v, "", func(c *VaultConfig) {
		c.Auth = VaultAuth{Method: VaultAuthKubernetes, KubernetesRole: "brownie-sidecar", KubernetesTokenFile: jwtFile}
	})
	refreshNow(t, s)
	runSource(t, s)

	// The kubelet rotates the projected token; Vault accepts the new one.
	v.SetKubernetesJWTs("jwt-1", "jwt-2")
	if err := WriteFileAtomic(jwtFile, []byte("jwt-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	v.SetKubernetesJWTs("jwt-2")
	eventually(t, 15*time.Second, func() bool {
		st := s.Status()
		return st.Logins >= 2 && st.Renewals >= 1
	})
	// (A renewal may fail if this machine is slow enough for the token to
	// expire first; a login then follows, which is the point.)
	if st := s.Status(); st.LoginFailures != 0 || st.Renewals == 0 || st.Logins < 2 {
		t.Fatalf("status %+v", st)
	}
	// The new token works for certificates.
	refreshNow(t, s)
	for _, e := range logs.All() {
		for k, f := range e.ContextMap() {
			if s := fmt.Sprint(f); strings.Contains(s, "jwt-") || strings.Contains(s, "hvs.") {
				t.Errorf("log %q field %s leaks a credential: %s", e.Message, k, s)
			}
		}
	}
}

func TestAppRoleLogsInAgainWhenItsTokenIsRevoked(t *testing.T) {
	v, _, _ := testVault(t, func(c *vaulttest.Config) {
		c.AppRoleRoleID, c.AppRoleSecretIDs = "role-1", []string{"secret-1"}
		c.LoginNonRenewable = true
	})
	s, _ := newTestVaultSource(t, v, "", func(c *VaultConfig) {
		c.Auth = VaultAuth{Method: VaultAuthAppRole, AppRoleRoleID: "role-1", AppRoleSecretIDFile: writeSecret(t, "secret-1")}
	})
	refreshNow(t, s)
	v.RevokeTokens()
	refreshNow(t, s)
	if st := v.Stats(); st.Logins["approle"] != 2 || st.Signs != 2 {
		t.Fatalf("server stats %+v", st)
	}
	if st := s.Status(); st.AuthMethod != "approle" || st.Logins != 2 || st.Generation != 2 {
		t.Fatalf("status %+v", st)
	}
}

func TestKVModeSwapsOnlyWhenTheBundleChangesAndThePairValidates(t *testing.T) {
	v, ca, tok := testVault(t, nil)
	crt1, key1, serial1 := issueClient(t, ca, LeafOptions{TTL: time.Hour})
	v.PutKV("brownie-metadata/certs", map[string]any{
		"client_cert": string(crt1), "client_key": string(key1), "ca_cert": string(ca.CertPEM)})
	s, logs := newTestVaultSource(t, v, tok, func(c *VaultConfig) {
		c.Mode, c.KVPollInterval = VaultModeKV, 50*time.Millisecond
	})
	refreshNow(t, s)
	if b := mustCurrent(t, s); b.Serial != serial1 || b.Generation != 1 {
		t.Fatalf("serial %s gen %d, want %s 1", b.Serial, b.Generation, serial1)
	}
	runSource(t, s)

	// Same content again: polled, not swapped.
	v.PutKV("brownie-metadata/certs", map[string]any{
		"client_cert": string(crt1), "client_key": string(key1), "ca_cert": string(ca.CertPEM)})
	reads := v.Stats().KVReads
	eventually(t, 10*time.Second, func() bool { return v.Stats().KVReads >= reads+3 })
	if g := s.Status().Generation; g != 1 {
		t.Fatalf("unchanged bundle swapped: generation %d", g)
	}

	// A new pair stored as base64 of PEM, as the original system did.
	crt2, key2, serial2 := issueClient(t, ca, LeafOptions{TTL: time.Hour})
	b64 := base64.StdEncoding.EncodeToString
	v.PutKV("brownie-metadata/certs", map[string]any{
		"client_cert": b64(crt2), "client_key": b64(key2), "ca_cert": b64(ca.CertPEM)})
	// The pair is swapped in before its rotation is logged: wait for both.
	eventually(t, 10*time.Second, func() bool {
		return currentSerial(s) == serial2 && logs.FilterMessage("certificate rotated").Len() > 0
	})
	if e := logs.FilterMessage("certificate rotated").All(); len(e) != 1 || e[0].ContextMap()["kv_version"] != int64(3) {
		t.Fatalf("rotation log %v", e)
	}

	// A certificate with someone else's key is refused; the pair stays.
	_, otherKey, _ := issueClient(t, ca, LeafOptions{})
	v.PutKV("brownie-metadata/certs", map[string]any{
		"client_cert": string(crt1), "client_key": string(otherKey), "ca_cert": string(ca.CertPEM)})
	eventually(t, 10*time.Second, func() bool { return s.Status().FailuresByReason[ReasonMismatch] > 0 })
	if currentSerial(s) != serial2 || s.Status().Generation != 2 {
		t.Fatalf("mismatched pair replaced the certificate: %+v", s.Status())
	}
	// Garbage is a parse failure.
	v.PutKV("brownie-metadata/certs", map[string]any{"client_cert": "not pem", "client_key": string(key2)})
	eventually(t, 10*time.Second, func() bool { return s.Status().FailuresByReason[ReasonParse] > 0 })
	if currentSerial(s) != serial2 {
		t.Fatal("garbage replaced the certificate")
	}
	_ = serial1
}

func TestRefreshNowSharesTheOutcomeOfAnAttemptMadeWhileItWaited(t *testing.T) {
	v, _, tok := testVault(t, nil)
	s, _ := newTestVaultSource(t, v, tok, nil)
	seen := s.attempts.Load() // a dialer finds no certificate...
	refreshNow(t, s)          // ...while another one fetches it
	if err := s.refreshAfter(context.Background(), seen); err != nil {
		t.Fatal(err)
	}
	if n := v.Stats().Signs; n != 1 {
		t.Fatalf("%d sign requests, want 1", n)
	}

	// The same for a failure: the waiter gets the error without a request.
	v.Stop()
	seen = s.attempts.Load()
	first := s.RefreshNow(context.Background())
	if first == nil {
		t.Fatal("refresh against a stopped Vault succeeded")
	}
	s.current.Store(nil) // pretend the certificate is unusable
	requests := len(v.Requests())
	if err := s.refreshAfter(context.Background(), seen); err != first {
		t.Fatalf("waiter got %v, want the shared %v", err, first)
	}
	if len(v.Requests()) != requests || s.attempts.Load() != seen+1 {
		t.Fatal("waiter made its own attempt")
	}
}

func TestManyConcurrentRefreshNowCallsMakeFewRequests(t *testing.T) {
	v, _, tok := testVault(t, nil)
	s, _ := newTestVaultSource(t, v, tok, nil)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.RefreshNow(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := v.Stats().Signs; n < 1 || n > 20 {
		t.Fatalf("%d sign requests", n)
	}
	if g := mustCurrent(t, s).Generation; g != uint64(v.Stats().Signs) {
		t.Fatalf("generation %d after %d signs", g, v.Stats().Signs)
	}
}

func TestRefreshesAreRateLimited(t *testing.T) {
	v, _, tok := testVault(t, nil)
	s, _ := newTestVaultSource(t, v, tok, func(c *VaultConfig) {
		c.MinRefreshInterval, c.RefreshBurst = 200*time.Millisecond, 1
	})
	start := time.Now()
	for range 4 {
		refreshNow(t, s)
	}
	if el := time.Since(start); el < 550*time.Millisecond {
		t.Fatalf("4 refreshes in %s; want at least 3 × 200ms", el)
	}
	// A caller that cannot wait for its turn gets an error, and Vault no
	// request.
	signs := v.Stats().Signs
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.RefreshNow(ctx); err == nil {
		t.Fatal("RefreshNow within a too-short deadline succeeded")
	}
	if v.Stats().Signs != signs {
		t.Fatal("the rate limit let a request through")
	}
}

func TestNamespaceAndVaultTLSAreHonoured(t *testing.T) {
	v, _, tok := testVault(t, func(c *vaulttest.Config) { c.TLS, c.Namespace = true, "team-a" })
	if !strings.HasPrefix(v.URL(), "https://") {
		t.Fatalf("URL %s", v.URL())
	}
	s, _ := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.Namespace, c.CACert = "team-a", v.CACertFile() })
	refreshNow(t, s)
	for _, r := range v.Requests() {
		if r.Namespace != "team-a" {
			t.Errorf("%s %s sent namespace %q", r.Method, r.Path, r.Namespace)
		}
	}
	// Without the CA, Vault's certificate does not verify.
	s2, _ := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.Namespace = "team-a" })
	if err := s2.RefreshNow(context.Background()); reasonOf(err) != ReasonVaultUnreachable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without VAULT_CACERT: %v", err)
	}
}

func TestTheUpstreamCAFileReplacesVaultsChain(t *testing.T) {
	v, _, tok := testVault(t, nil)
	other := testCA(t)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.crt")
	if err := os.WriteFile(caFile, other.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := newTestVaultSource(t, v, tok, func(c *VaultConfig) { c.UpstreamCAFile = caFile })
	refreshNow(t, s)
	srvPEM, _, err := other.Issue(LeafOptions{CommonName: "db", DNSNames: []string{"db"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := parseCertificates(srvPEM)
	if _, err := srv[0].Verify(x509.VerifyOptions{Roots: mustCurrent(t, s).Roots, DNSName: "db"}); err != nil {
		t.Fatalf("roots from VAULT_CA_FILE do not verify: %v", err)
	}
}

func TestNoCredentialOrKeyReachesLogsStatusOrErrors(t *testing.T) {
	v, _, _ := testVault(t, func(c *vaulttest.Config) {
		c.AppRoleRoleID, c.AppRoleSecretIDs = "role-1", []string{"s3cr3t-id-value"}
	})
	s, logs := newTestVaultSource(t, v, "", func(c *VaultConfig) {
		c.Mode = VaultModeIssue
		c.Auth = VaultAuth{Method: VaultAuthAppRole, AppRoleRoleID: "role-1", AppRoleSecretIDFile: writeSecret(t, "s3cr3t-id-value")}
	})
	refreshNow(t, s)
	v.RevokeTokens()
	v.SetAppRoleSecretIDs("another")
	err := s.RefreshNow(context.Background())
	if reasonOf(err) != ReasonLogin {
		t.Fatalf("login with a stale secret id: %v", err)
	}
	var texts []string
	texts = append(texts, err.Error(), fmt.Sprintf("%+v", s.Status()))
	for _, e := range logs.All() {
		texts = append(texts, e.Message, fmt.Sprint(e.ContextMap()))
	}
	for _, text := range texts {
		for _, secret := range []string{"s3cr3t-id-value", "hvs.", "PRIVATE KEY"} {
			if strings.Contains(text, secret) {
				t.Errorf("%q leaks %q", text, secret)
			}
		}
	}
}

func TestNewVaultSourceReportsEveryConfigurationProblem(t *testing.T) {
	_, err := NewVaultSource(VaultConfig{Mode: "pull", Auth: VaultAuth{Method: "ldap"}}, nil)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"address", `mode "pull"`, `auth method "ldap"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	_, err = NewVaultSource(VaultConfig{Address: "http://127.0.0.1:1", Auth: VaultAuth{Method: VaultAuthAppRole}}, nil)
	for _, want := range []string{"PKI role", "common name", "role id"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
}

func TestRunStopsWhenTheContextEndsEvenWhileVaultHangs(t *testing.T) {
	// A listener that accepts and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	s, err := NewVaultSource(VaultConfig{Address: "http://" + ln.Addr().String(), PKIRole: "r", CommonName: "c",
		Auth: VaultAuth{Token: "t"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(conns) > 0 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if st := s.Status(); st.Failures != 0 {
		t.Errorf("shutdown counted as a failure: %+v", st)
	}
}
