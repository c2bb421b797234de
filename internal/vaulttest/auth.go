package vaulttest

import (
	"fmt"
	"net/http"
	"time"
)

// newTokenLocked creates a token. The caller holds s.mu.
func (s *Server) newTokenLocked(now time.Time, ttl, maxTTL time.Duration, renewable bool, path string, policies []string) string {
	id := "hvs." + randomString(24)
	t := &token{
		accessor: randomString(24), policies: policies, created: now,
		creatTTL: ttl, renewable: renewable, path: path,
	}
	if ttl > 0 {
		t.expires = now.Add(ttl)
	}
	if maxTTL > 0 {
		t.maxExpires = now.Add(maxTTL)
		if t.expires.IsZero() || t.expires.After(t.maxExpires) {
			t.expires = t.maxExpires
		}
	}
	s.tokens[id] = t
	return id
}

// ttlSeconds is the remaining lease of t in whole seconds, truncated as
// Vault does; 0 for a token that never expires.
func ttlSeconds(t *token, now time.Time) int {
	if t.expires.IsZero() {
		return 0
	}
	return int(max(t.expires.Sub(now), 0) / time.Second)
}

// authBlock is the "auth" object of a login or renewal response.
func authBlock(id string, t *token, now time.Time, metadata map[string]string) map[string]any {
	return map[string]any{
		"client_token":      id,
		"accessor":          t.accessor,
		"policies":          t.policies,
		"token_policies":    t.policies,
		"identity_policies": nil,
		"metadata":          metadata,
		"lease_duration":    ttlSeconds(t, now),
		"renewable":         t.renewable,
		"entity_id":         "",
		"token_type":        "service",
		"orphan":            true,
		"mfa_requirement":   nil,
		"num_uses":          0,
	}
}

func (s *Server) login(method string, metadata map[string]string) (any, *vaultError) {
	s.stats.Logins[method]++
	now := time.Now()
	id := s.newTokenLocked(now, s.cfg.LoginTTL, s.cfg.LoginMaxTTL, !s.cfg.LoginNonRenewable,
		"auth/"+method+"/login", []string{"default", "brownie-sidecar"})
	return envelope(nil, authBlock(id, s.tokens[id], now, metadata), nil, ""), nil
}

// kubernetesLogin implements POST /v1/auth/<mount>/login of the Kubernetes
// auth method.
func (s *Server) kubernetesLogin(req map[string]any) (any, *vaultError) {
	role, jwt := str(req, "role"), str(req, "jwt")
	switch {
	case role == "":
		s.stats.LoginFailures["kubernetes"]++
		return nil, fail(http.StatusBadRequest, "missing role")
	case jwt == "":
		s.stats.LoginFailures["kubernetes"]++
		return nil, fail(http.StatusBadRequest, "missing jwt")
	case role != s.cfg.KubernetesRole:
		s.stats.LoginFailures["kubernetes"]++
		return nil, fail(http.StatusBadRequest, fmt.Sprintf("invalid role name %q", role))
	case !s.jwts[jwt]:
		s.stats.LoginFailures["kubernetes"]++
		return nil, errDenied
	}
	return s.login("kubernetes", map[string]string{"role": role, "service_account_name": "brownie-sidecar",
		"service_account_namespace": "default"})
}

// appRoleLogin implements POST /v1/auth/<mount>/login of the AppRole auth
// method.
func (s *Server) appRoleLogin(req map[string]any) (any, *vaultError) {
	roleID, secretID := str(req, "role_id"), str(req, "secret_id")
	switch {
	case roleID == "":
		s.stats.LoginFailures["approle"]++
		return nil, fail(http.StatusBadRequest, "missing role_id")
	case roleID != s.cfg.AppRoleRoleID:
		s.stats.LoginFailures["approle"]++
		return nil, fail(http.StatusBadRequest, "invalid role ID")
	case len(s.secretIDs) > 0 && secretID == "":
		s.stats.LoginFailures["approle"]++
		return nil, fail(http.StatusBadRequest, "missing secret_id")
	case len(s.secretIDs) > 0 && !s.secretIDs[secretID]:
		s.stats.LoginFailures["approle"]++
		return nil, fail(http.StatusBadRequest, "invalid secret id")
	}
	return s.login("approle", map[string]string{"role_name": "brownie-sidecar"})
}

// renewSelf implements PUT /v1/auth/token/renew-self.
func (s *Server) renewSelf(r *http.Request, req map[string]any) (any, *vaultError) {
	id, verr := s.authenticate(r)
	if verr != nil {
		s.stats.RenewFailures++
		return nil, verr
	}
	t := s.tokens[id]
	if !t.renewable {
		s.stats.RenewFailures++
		return nil, fail(http.StatusBadRequest, "lease is not renewable")
	}
	inc, err := seconds(req["increment"])
	if err != nil {
		s.stats.RenewFailures++
		return nil, fail(http.StatusBadRequest, "invalid increment")
	}
	if inc <= 0 {
		inc = t.creatTTL
	}
	now := time.Now()
	var warnings []string
	if inc > 0 {
		t.expires = now.Add(inc)
		if !t.maxExpires.IsZero() && t.expires.After(t.maxExpires) {
			warnings = append(warnings, fmt.Sprintf(
				"TTL of %q exceeded the effective max_ttl of %q; TTL value is capped accordingly",
				inc.String(), t.maxExpires.Sub(now).Truncate(time.Second).String()))
			t.expires = t.maxExpires
		}
	}
	s.stats.Renewals++
	return envelope(nil, authBlock(id, t, now, nil), warnings, ""), nil
}

// lookupSelf implements GET /v1/auth/token/lookup-self.
func (s *Server) lookupSelf(r *http.Request) (any, *vaultError) {
	id, verr := s.authenticate(r)
	if verr != nil {
		return nil, verr
	}
	s.stats.LookupSelf++
	t := s.tokens[id]
	now := time.Now()
	var expire any
	if !t.expires.IsZero() {
		expire = t.expires.UTC().Format(time.RFC3339Nano)
	}
	return envelope(map[string]any{
		"accessor":         t.accessor,
		"creation_time":    t.created.Unix(),
		"creation_ttl":     int(t.creatTTL / time.Second),
		"display_name":     "token",
		"entity_id":        "",
		"expire_time":      expire,
		"explicit_max_ttl": 0,
		"id":               id,
		"issue_time":       t.created.UTC().Format(time.RFC3339Nano),
		"meta":             nil,
		"num_uses":         0,
		"orphan":           true,
		"path":             t.path,
		"policies":         t.policies,
		"renewable":        t.renewable,
		"ttl":              ttlSeconds(t, now),
		"type":             "service",
	}, nil, nil, "token"), nil
}
