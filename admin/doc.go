// Package admin is the sidecar's admin HTTP port: liveness (/health),
// readiness (/ready), startup (/startup), Prometheus metrics (/metrics),
// the operator's view (/status) and the backup API (/backup/create,
// /backup/list, /backup/{name}, /backup/restore).
//
// It is a plain http.Handler that depends on small interfaces and
// functions defined here (Check, Backups, the status sections), never on
// concrete proxy, router or backup types; it owns authentication (a bearer
// token compared in constant time), request limits and error bodies, and
// never exposes or logs secrets. It opens no sockets: the caller serves it.
package admin
