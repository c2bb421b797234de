package app

import (
	"context"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/config"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// newCertSource returns the upstream client certificate source chosen by
// VAULT_ENABLED: files in LOCAL_CERT_DIR, or Vault. A file source fails here
// when the files are unusable. A Vault source makes one synchronous attempt
// (bounded by VAULT_CLIENT_TIMEOUT) so the sidecar usually starts with a
// certificate; if Vault cannot be reached the sidecar still starts, /ready
// stays 503 and the source keeps retrying with backoff once Run starts, so
// a Vault outage during a rollout does not crash-loop every pod.
func newCertSource(cfg config.Config, log *zap.Logger) (brownietls.Source, error) {
	if !cfg.Vault.Enabled {
		return brownietls.NewFileSource(brownietls.FileConfig{Dir: cfg.DB.CertDir}, log)
	}
	v := cfg.Vault
	src, err := brownietls.NewVaultSource(brownietls.VaultConfig{
		Address:        v.Address(),
		Namespace:      v.Namespace,
		CACert:         v.CACert,
		Timeout:        v.Timeout,
		Mode:           v.Mode,
		CommonName:     cfg.DB.User,
		PKIMount:       v.PKIMount,
		PKIRole:        v.PKIRole,
		TTL:            v.CertTTL,
		KVPath:         v.CertPath,
		KVPollInterval: v.KVPollInterval,
		RefreshBuffer:  v.RefreshBuffer,
		UpstreamCAFile: v.CAFile,
		Auth: brownietls.VaultAuth{
			Method:              v.Auth,
			Token:               string(v.Token),
			TokenFile:           v.TokenFile,
			KubernetesRole:      v.K8sRole,
			KubernetesMount:     v.K8sMount,
			KubernetesTokenFile: v.K8sTokenFile,
			AppRoleRoleID:       v.AppRoleRoleID,
			AppRoleSecretIDFile: v.AppRoleSecretIDFile,
			AppRoleMount:        v.AppRoleMount,
		},
	}, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.Timeout)
	defer cancel()
	if err := src.RefreshNow(ctx); err != nil {
		// Already logged as "certificate refresh failed" with the reason.
		log.Warn("starting without a client certificate", zap.String("source", "vault"),
			zap.String("address", v.Address()), zap.String("mode", v.Mode))
	}
	return src, nil
}
