# Vault policy of the Brownie DB sidecars: obtain a client certificate for
# the database role from the PKI mount, nothing else. Token renewal and
# lookup of their own token come with Vault's "default" policy.
#
#   vault policy write brownie-sidecar deploy/vault/brownie-sidecar-policy.hcl

# VAULT_MODE=sign (the default): the sidecar sends a CSR; its key never
# leaves the pod.
path "pki_brownie_db/sign/brownie-fastapi-server" {
  capabilities = ["create", "update"]
}

# VAULT_MODE=issue: Vault generates the key.
path "pki_brownie_db/issue/brownie-fastapi-server" {
  capabilities = ["create", "update"]
}
