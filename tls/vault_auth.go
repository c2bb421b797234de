package tls

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"
)

// vaultCall runs op with a usable token, logging in first when none is
// held or the one held is about to expire. If Vault answers 403 (the token
// was revoked or expired early) it logs in again and retries op once. The
// caller holds s.io.
func vaultCall[T any](ctx context.Context, s *VaultSource, op func() (T, error)) (T, error) {
	var zero T
	if !s.tok.usable(time.Now()) {
		if err := s.login(ctx); err != nil {
			return zero, err
		}
	}
	v, err := op()
	if statusOf(err) != http.StatusForbidden {
		return v, err
	}
	s.log.Info("vault permission denied, logging in again", zap.String("method", s.cfg.Auth.Method))
	s.tok = nil // refused: not worth keeping if the login fails
	if err := s.login(ctx); err != nil {
		return zero, err
	}
	return op()
}

// login obtains a token with the configured method and makes it the client's
// token. On failure the token in use is kept if it is still usable. The
// caller holds s.io.
func (s *VaultSource) login(ctx context.Context) error {
	now := time.Now()
	tok, err := s.obtainToken(ctx)
	if err != nil && ctx.Err() != nil {
		return err // shutting down or the caller gave up: not a login failure
	}
	if err != nil {
		s.tokenFails++
		s.noteToken(func(st *Status) { st.LoginFailures++ })
		retry := time.Duration(0)
		if s.tok.usable(now) {
			s.client.SetToken(s.tok.value) // keep using the old one
			retry = retryDelay(s.tokenFails, s.tok.ttl, rand.Float64()*2-1)
			s.setTokenDue(now.Add(retry))
		} else {
			s.tok = nil
			s.client.ClearToken()
			s.setTokenDue(time.Time{}) // the next certificate refresh logs in
		}
		s.log.Warn("vault login failed", zap.String("method", s.cfg.Auth.Method),
			zap.String("reason", reasonOf(err)), zap.Duration("retry_in", retry), zap.Error(err))
		return err
	}
	s.tokenFails = 0
	s.tok = tok
	s.client.SetToken(tok.value)
	s.noteToken(func(st *Status) { st.Logins++ })
	s.setTokenDue(s.tokenMaintenanceAt(tok))
	s.log.Info("vault login", zap.String("method", s.cfg.Auth.Method),
		zap.Duration("ttl", tok.ttl), zap.Bool("renewable", tok.renewable))
	return nil
}

// tokenMaintenanceAt returns when tok should be renewed or replaced, or the
// zero time when nothing can be done about it (a static VAULT_TOKEN that is
// not renewable) or nothing needs to be (no expiry).
func (s *VaultSource) tokenMaintenanceAt(tok *vaultToken) time.Time {
	if tok.ttl == 0 {
		return time.Time{}
	}
	if !tok.renewable && s.cfg.Auth.Method == VaultAuthToken && s.cfg.Auth.TokenFile == "" {
		return time.Time{}
	}
	return tokenRenewAt(tok.obtained, tok.ttl, rand.Float64()*2-1)
}

// obtainToken performs one login with the configured method.
func (s *VaultSource) obtainToken(ctx context.Context) (*vaultToken, error) {
	a := s.cfg.Auth
	now := time.Now()
	if a.Method == VaultAuthToken {
		value := a.Token
		if a.TokenFile != "" {
			v, err := readSecretFile("Vault token file", a.TokenFile)
			if err != nil {
				return nil, err
			}
			value = v
		}
		s.client.SetToken(value)
		secret, err := s.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return nil, s.loginError("token lookup-self", "auth/token/lookup-self", err, value)
		}
		ttl, terr := secret.TokenTTL()
		renewable, rerr := secret.TokenIsRenewable()
		if terr != nil || rerr != nil {
			return nil, &CertError{Reason: ReasonLogin, Msg: "vault token lookup-self: malformed ttl or renewable in response"}
		}
		return &vaultToken{value: value, obtained: now, ttl: ttl, loginTTL: ttl, renewable: renewable}, nil
	}

	var path string
	var body map[string]any
	var secrets []string
	switch a.Method {
	case VaultAuthKubernetes:
		jwt, err := readSecretFile("Kubernetes service account token", a.KubernetesTokenFile)
		if err != nil {
			return nil, err
		}
		path = "auth/" + a.KubernetesMount + "/login"
		body = map[string]any{"role": a.KubernetesRole, "jwt": jwt}
		secrets = []string{jwt}
	case VaultAuthAppRole:
		path = "auth/" + a.AppRoleMount + "/login"
		body = map[string]any{"role_id": a.AppRoleRoleID}
		if a.AppRoleSecretIDFile != "" {
			id, err := readSecretFile("AppRole secret id file", a.AppRoleSecretIDFile)
			if err != nil {
				return nil, err
			}
			body["secret_id"] = id
			secrets = []string{id}
		}
	}
	s.client.ClearToken() // a login carries no token
	secret, err := s.client.Logical().WriteWithContext(ctx, path, body)
	if err != nil {
		return nil, s.loginError(a.Method+" login", path, err, secrets...)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return nil, &CertError{Reason: ReasonLogin, Msg: fmt.Sprintf("vault %s login at %s: response has no auth.client_token", a.Method, path)}
	}
	ttl := time.Duration(secret.Auth.LeaseDuration) * time.Second
	return &vaultToken{value: secret.Auth.ClientToken, obtained: now, ttl: ttl, loginTTL: ttl,
		renewable: secret.Auth.Renewable}, nil
}

// maintainToken renews the token while it is renewable and logs in again
// when it is not, when a renewal fails or when renewals are capped by the
// token's max TTL. The caller holds s.io.
func (s *VaultSource) maintainToken(ctx context.Context) {
	tok := s.tok
	if tok == nil {
		s.setTokenDue(time.Time{})
		return
	}
	if tok.renewable && !tok.relogin {
		now := time.Now()
		increment := int(tok.loginTTL / time.Second)
		secret, err := s.client.Auth().Token().RenewSelfWithContext(ctx, increment)
		if err == nil && secret != nil && secret.Auth != nil && secret.Auth.LeaseDuration > 0 {
			ttl := time.Duration(secret.Auth.LeaseDuration) * time.Second
			tok.obtained, tok.ttl, tok.renewable = now, ttl, secret.Auth.Renewable
			// A lease much shorter than asked for means the max TTL is
			// near: log in afresh next time.
			tok.relogin = ttl <= tok.loginTTL/2
			s.noteToken(func(st *Status) { st.Renewals++ })
			s.setTokenDue(s.tokenMaintenanceAt(tok))
			s.log.Debug("vault token renewed", zap.String("method", s.cfg.Auth.Method),
				zap.Duration("ttl", ttl), zap.Bool("login_next", tok.relogin))
			return
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			// No lease left: the token reached its max TTL.
			err = errors.New("response grants no lease (max TTL reached)")
		}
		rerr := s.vaultError("token renew-self", "auth/token/renew-self", err)
		s.noteToken(func(st *Status) { st.RenewFailures++ })
		s.log.Warn("vault token renewal failed", zap.String("method", s.cfg.Auth.Method),
			zap.String("reason", reasonOf(rerr)), zap.Error(rerr))
	}
	_ = s.login(ctx) // logged and recorded; keeps a still-usable token on failure
}

// statusOf returns the HTTP status of a Vault error response, or 0.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// loginError classifies a failed login: Vault being unreachable or
// unavailable keeps that reason; a refusal is ReasonLogin. Credentials are
// redacted from the message.
func (s *VaultSource) loginError(op, path string, err error, secrets ...string) error {
	e := s.vaultError(op, path, err, secrets...)
	if ce, ok := e.(*CertError); ok && ce.Reason != ReasonVaultUnreachable && ce.Reason != ReasonVaultUnavailable {
		ce.Reason = ReasonLogin
	}
	return e
}

// vaultError turns a vault/api error into a *CertError with a one-line,
// secret-free message and a reason for metrics.
func (s *VaultSource) vaultError(op, path string, err error, secrets ...string) error {
	var ce *CertError
	if errors.As(err, &ce) {
		return ce
	}
	reason, detail := ReasonVaultUnreachable, err.Error()
	var re *api.ResponseError
	switch {
	case errors.As(err, &re):
		detail = fmt.Sprintf("%d %s", re.StatusCode, vaultMessages(re))
		switch {
		case re.StatusCode == http.StatusForbidden:
			reason = ReasonVaultDenied
		case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			reason = ReasonVaultUnavailable
		default:
			reason = ReasonVaultRejected
		}
	case errors.Is(err, api.ErrSecretNotFound):
		reason, detail = ReasonNotFound, "secret not found"
	}
	secrets = append(secrets, s.cfg.Auth.Token)
	if s.tok != nil {
		secrets = append(secrets, s.tok.value)
	}
	msg := redact(fmt.Sprintf("vault %s %s/v1/%s: %s", op, strings.TrimRight(s.cfg.Address, "/"), path, detail), secrets...)
	return &CertError{Reason: reason, Msg: msg, err: err}
}

// vaultMessages joins the messages of a Vault error body on one line, or
// gives the status text when there are none (a 404 for a missing KV secret
// has an empty list).
func vaultMessages(re *api.ResponseError) string {
	var msgs []string
	for _, m := range re.Errors {
		if m = strings.Join(strings.Fields(m), " "); m != "" {
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		return strings.ToLower(http.StatusText(re.StatusCode))
	}
	const limit = 300
	out := strings.Join(msgs, "; ")
	if len(out) > limit {
		out = out[:limit] + "…"
	}
	return out
}

// redact replaces every non-empty secret in msg.
func redact(msg string, secrets ...string) string {
	for _, v := range secrets {
		if len(v) >= 4 {
			msg = strings.ReplaceAll(msg, v, "[redacted]")
		}
	}
	return msg
}
