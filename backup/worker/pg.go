package worker

import (
	"github.com/brownie/brownie-sidecar/backup"

	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// connectTimeout bounds each connection attempt of pg_dump, pg_restore and
// pgx.
const connectTimeout = 15 * time.Second

// pgTarget says how to reach Postgres as the sidecar: the connection
// settings shared by pg_dump, pg_restore, the advisory lock and the
// metadata queries.
type pgTarget struct {
	database, user, sslMode string
	certs                   backup.CertsFunc
	tempDir                 string
}

// credDir is a private directory holding the client certificate for one
// operation. The key file is 0600 in a 0700 directory; remove deletes it.
type credDir struct {
	dir, cert, key, ca string
	once               sync.Once
	err                error
}

// writeCreds writes the current certificate into a new private directory
// under t.tempDir. The caller must call remove.
func (t *pgTarget) writeCreds() (*credDir, error) {
	if t.certs == nil {
		return nil, errors.New("no client certificate source")
	}
	certPEM, keyPEM, caPEM, err := t.certs()
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	if len(certPEM) == 0 || len(keyPEM) == 0 || len(caPEM) == 0 {
		return nil, errors.New("client certificate: certificate, key or CA is empty")
	}
	dir, err := os.MkdirTemp(t.tempDir, "brownie-backup-")
	if err != nil {
		return nil, fmt.Errorf("create private certificate directory: %w", err)
	}
	c := &credDir{
		dir:  dir,
		cert: filepath.Join(dir, "client.crt"),
		key:  filepath.Join(dir, "client.key"),
		ca:   filepath.Join(dir, "ca.crt"),
	}
	// MkdirTemp makes the directory 0700; make sure whatever the umask.
	err = os.Chmod(dir, 0o700)
	for _, f := range []struct {
		path string
		data []byte
	}{{c.key, keyPEM}, {c.cert, certPEM}, {c.ca, caPEM}} {
		if err != nil {
			break
		}
		err = writePrivate(f.path, f.data)
	}
	if err != nil {
		_ = c.remove()
		return nil, fmt.Errorf("write private certificate files: %w", err)
	}
	return c, nil
}

// writePrivate creates path (which must not exist) with mode 0600.
func writePrivate(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

// remove deletes the directory and the files in it. It is idempotent.
func (c *credDir) remove() error {
	c.once.Do(func() { c.err = os.RemoveAll(c.dir) })
	return c.err
}

// conninfo returns a libpq keyword/value connection string for database db
// on shard s, authenticating with the certificate files in c. With a
// ServerName it connects to hostaddr (Host, resolved if needed) and
// verifies host=ServerName, as libpq does. extra are further keywords
// (alternating keys and values).
func (t *pgTarget) conninfo(ctx context.Context, s backup.Shard, db string, c *credDir, extra ...string) (string, error) {
	kv := []string{"host", s.Host}
	if s.ServerName != "" && s.ServerName != s.Host {
		addr := s.Host
		if net.ParseIP(addr) == nil {
			addrs, err := net.DefaultResolver.LookupHost(ctx, addr)
			if err != nil || len(addrs) == 0 {
				return "", fmt.Errorf("resolve shard %s primary %s: %w", s.Name, s.Host, errors.Join(err, errors.New("no address")))
			}
			addr = addrs[0]
		}
		kv = []string{"host", s.ServerName, "hostaddr", addr}
	}
	kv = append(kv,
		"port", strconv.Itoa(s.Port),
		"dbname", db,
		"user", t.user,
		"sslmode", t.sslMode,
		"sslcert", c.cert,
		"sslkey", c.key,
		"sslrootcert", c.ca,
		"connect_timeout", strconv.Itoa(int(connectTimeout/time.Second)),
		"application_name", "brownie-sidecar-backup",
	)
	kv = append(kv, extra...)
	parts := make([]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, kv[i]+"="+quoteConninfo(kv[i+1]))
	}
	return strings.Join(parts, " "), nil
}

// quoteConninfo quotes a keyword/value connection-string value.
func quoteConninfo(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// connect opens a pgx connection to database db on shard s with the current
// certificate. The certificate files exist only while the configuration is
// parsed (pgx loads them into memory); they are removed before dialling.
func (t *pgTarget) connect(ctx context.Context, s backup.Shard, db string) (*pgx.Conn, error) {
	c, err := t.writeCreds()
	if err != nil {
		return nil, err
	}
	defer c.remove()
	return t.connectWith(ctx, s, db, c, true)
}

// connectWith is connect with existing certificate files, which it removes
// before dialling when removeFiles is set.
func (t *pgTarget) connectWith(ctx context.Context, s backup.Shard, db string, c *credDir, removeFiles bool) (*pgx.Conn, error) {
	info, err := t.conninfo(ctx, backup.Shard{Name: s.Name, Host: s.Host, Port: s.Port}, db, c)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(info)
	if err != nil {
		return nil, fmt.Errorf("connection settings: %w", err)
	}
	if s.ServerName != "" {
		setServerName(cfg.TLSConfig, s.ServerName)
		for _, fb := range cfg.Fallbacks {
			setServerName(fb.TLSConfig, s.ServerName)
		}
	}
	if removeFiles {
		if err := c.remove(); err != nil {
			return nil, fmt.Errorf("remove private certificate directory: %w", err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s:%d: %w", s.Host, s.Port, err)
	}
	return conn, nil
}

// setServerName makes verify-full check name instead of the dialled host.
func setServerName(tc *tls.Config, name string) {
	if tc != nil && !tc.InsecureSkipVerify {
		tc.ServerName = name
	}
}

// toolCommand builds a pg_dump or pg_restore command with a minimal
// environment: no inherited PG* variables (the connection string says
// everything), HOME in the private directory so that no ~/.pgpass or
// ~/.postgresql is read, and messages in English.
func toolCommand(ctx context.Context, path string, c *credDir, args ...string) (*exec.Cmd, *tailBuffer) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{"HOME=" + c.dir, "LC_ALL=C", "PGSYSCONFDIR=" + c.dir}
	cmd.Dir = c.dir
	cmd.WaitDelay = 5 * time.Second
	stderr := &tailBuffer{max: 4096}
	cmd.Stderr = stderr
	return cmd, stderr
}

// tailBuffer keeps the last max bytes written to it; it collects a child's
// stderr for error messages. Safe for concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

// String returns the collected output, trimmed, on one line per message.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(bytes.TrimSpace(b.buf))
}

// toolError describes a failed child process with the end of its stderr.
func toolError(tool string, err error, stderr *tailBuffer) error {
	if msg := stderr.String(); msg != "" {
		return fmt.Errorf("%s: %w: %s", tool, err, msg)
	}
	return fmt.Errorf("%s: %w", tool, err)
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
