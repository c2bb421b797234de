// Package deploy holds the deployment files: SQL (sql/), Postgres settings
// (postgres/), the shard map (shardmap/), the Helm chart (helm/), the
// kustomize base and overlays (k8s/), the Vault policy and role (vault/)
// and the monitoring (monitoring/). Its tests decode every manifest
// strictly into its Kubernetes type.
//
// go generate ./deploy refreshes the generated files (see internal/gen).
package deploy

//go:generate go run ./gen
