package pgcluster

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// HBA is the complete pg_hba.conf the package writes into every cluster.
//
// Local (Unix-socket) connections are trusted, for setup and for
// pg_basebackup from a replica on the same machine. Every TCP connection must
// use TLS and present a client certificate signed by the cluster's CA whose
// CN equals the requested role (method "cert", no user map); there are no
// plain "host" lines, so a TCP client without a certificate is rejected.
// deploy/postgres/pg_hba.conf holds the same rules, commented, as the
// production recommendation.
const HBA = `local   all          all                  trust
local   replication  all                  trust
hostssl all          all   127.0.0.1/32   cert
hostssl all          all   ::1/128        cert
`

// includeLine is appended once to postgresql.conf so that sidecar.conf,
// rewritten on every Create, overrides initdb's defaults. postgresql.auto.conf
// (ALTER SYSTEM) is still read last and wins.
const includeLine = "include_if_exists = 'sidecar.conf'"

const (
	sidecarConfName = "sidecar.conf"
	serverCertName  = "server.crt"
	serverKeyName   = "server.key"
	caCertName      = "ca.crt"
)

// sidecarConf renders sidecar.conf: the package defaults, then the
// replication source for a standby, then the caller's settings in key order
// (later lines win in postgresql.conf).
func sidecarConf(port int, socketDir, primaryConninfo string, extra map[string]string) string {
	var b strings.Builder
	b.WriteString("# Written by internal/pgcluster on every Create; edits are overwritten.\n")
	b.WriteString("# Dev/test settings: fsync and full_page_writes are off for speed.\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(v)) }
	set("listen_addresses", "127.0.0.1")
	set("port", strconv.Itoa(port))
	set("unix_socket_directories", socketDir)
	set("ssl", "on")
	set("ssl_cert_file", serverCertName)
	set("ssl_key_file", serverKeyName)
	set("ssl_ca_file", caCertName)
	set("ssl_min_protocol_version", "TLSv1.2")
	set("max_connections", "200")
	set("max_prepared_transactions", "64") // two-phase commit of writes spanning shards
	set("wal_level", "replica")
	set("max_wal_senders", "10")
	set("hot_standby", "on")
	set("fsync", "off")
	set("synchronous_commit", "off")
	set("full_page_writes", "off")
	set("shared_buffers", "32MB")
	set("log_min_messages", "warning")
	if primaryConninfo != "" {
		set("primary_conninfo", primaryConninfo)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, extra[k])
	}
	return b.String()
}

// quoteConf quotes a postgresql.conf value. Every value may be quoted,
// whatever its type.
func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// quoteConninfo quotes a libpq keyword/value connection-string value.
func quoteConninfo(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// withoutSetting returns conf without the lines that assign name, used to
// drop the primary_conninfo that pg_basebackup -R writes into
// postgresql.auto.conf so that sidecar.conf is its only source.
func withoutSetting(conf, name string) string {
	var b strings.Builder
	for line := range strings.Lines(conf) {
		key, _, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.TrimSpace(key) == name {
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}
