// Package admin is the sidecar's admin HTTP port: liveness, readiness and
// Prometheus metrics (backups and status come later). It is a plain
// http.Handler that depends on small interfaces defined here, never on
// concrete proxy types, and never exposes secrets.
package admin
