// Package config is the sidecar's configuration as data: parsed once from an
// explicit environment map (never from os.Getenv) and validated as a whole,
// so a bad configuration is reported with every problem at once.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// Config is the whole sidecar configuration. It is immutable after Load.
type Config struct {
	DB      DB
	Listen  Listen
	Pool    Pool
	Routing Routing
	Admin   Admin
	Vault   Vault
	Backup  Backup
	// DBMetrics configures the database and entity gauges.
	DBMetrics DBMetrics
	LogLevel  string `env:"LOG_LEVEL" envDefault:"info"`
	// LogFormat is "json" (default, for production) or "console".
	LogFormat string `env:"LOG_FORMAT" envDefault:"json"`
	// ShutdownTimeout bounds how long running transactions may take to
	// finish after SIGTERM before their clients get FATAL 57P01.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s"`
}

// SSL modes accepted for the upstream connection. Anything weaker than
// require is refused: the sidecar authenticates with certificates only.
const (
	SSLRequire    = "require"
	SSLVerifyCA   = "verify-ca"
	SSLVerifyFull = "verify-full"
)

// DB describes the upstream database and the identity presented to it.
type DB struct {
	Host string `env:"DB_HOST" envDefault:"localhost"`
	Port int    `env:"DB_PORT" envDefault:"5432"`
	Name string `env:"DB_NAME" envDefault:"brownie_metadata"`
	// User is the database role; it must equal the client certificate CN.
	User    string `env:"DB_USER" envDefault:"brownie-fastapi-server"`
	SSLMode string `env:"DB_SSL_MODE" envDefault:"verify-full"`
	// ServerName overrides the host name checked by verify-full.
	ServerName string `env:"DB_SSL_SERVER_NAME"`
	// CertDir holds client.crt, client.key and ca.crt.
	CertDir        string        `env:"LOCAL_CERT_DIR" envDefault:"dev-certs"`
	ConnectTimeout time.Duration `env:"DB_CONNECT_TIMEOUT" envDefault:"5s"`
}

// Listen describes the client-facing side.
type Listen struct {
	Addr string `env:"LISTEN_ADDR" envDefault:"127.0.0.1:5432"`
	// SocketDir, when set, also serves a Unix socket named
	// .s.PGSQL.<port> in that directory, as Postgres does.
	SocketDir string `env:"LISTEN_SOCKET_DIR"`
	// TLSCert and TLSKey enable TLS for clients that send SSLRequest.
	TLSCert string `env:"CLIENT_TLS_CERT"`
	TLSKey  string `env:"CLIENT_TLS_KEY"`
	// AuthFile is a PgBouncer-style userlist ("user" "secret" per line,
	// secret plain or a SCRAM-SHA-256 verifier). Listed users must pass
	// SCRAM-SHA-256; unlisted users are trusted only from loopback and
	// Unix-socket peers.
	AuthFile string `env:"CLIENT_AUTH_FILE"`
	// AllowedCIDRs admits non-loopback TCP peers from these networks.
	AllowedCIDRs   []string      `env:"CLIENT_ALLOWED_CIDRS" envSeparator:","`
	StartupTimeout time.Duration `env:"CLIENT_STARTUP_TIMEOUT" envDefault:"15s"`
	MaxClients     int           `env:"MAX_CLIENT_CONN" envDefault:"10000"`
	// IdleRelease is how long a client session waits for its next
	// message before it gives back its read buffer and, when it holds
	// no upstream connection, its relay goroutine.
	IdleRelease time.Duration `env:"CLIENT_IDLE_RELEASE" envDefault:"1s"`
}

// Pool modes.
const (
	PoolSession     = "session"
	PoolTransaction = "transaction"
)

// Pin policies.
const (
	PinPin   = "pin"
	PinError = "error"
)

// Pool configures upstream connection pools (one per target).
type Pool struct {
	Mode           string        `env:"POOL_MODE" envDefault:"session"`
	Size           int           `env:"POOL_SIZE" envDefault:"20"`
	MinIdle        int           `env:"POOL_MIN_IDLE" envDefault:"0"`
	IdleTimeout    time.Duration `env:"POOL_IDLE_TIMEOUT" envDefault:"10m"`
	MaxLifetime    time.Duration `env:"POOL_MAX_LIFETIME" envDefault:"1h"`
	LifetimeJitter time.Duration `env:"POOL_LIFETIME_JITTER" envDefault:"5m"`
	AcquireTimeout time.Duration `env:"POOL_ACQUIRE_TIMEOUT" envDefault:"30s"`
	// CheckDelay: an idle upstream is checked (a non-blocking peek for a
	// FATAL or EOF the server sent while it sat idle) before reuse once it
	// has been idle this long; 0 checks at every reuse.
	CheckDelay time.Duration `env:"POOL_CHECK_DELAY" envDefault:"1s"`
	// RetireInterval staggers the closing of idle connections made with a
	// rotated-out certificate: at most one per interval.
	RetireInterval time.Duration `env:"POOL_RETIRE_INTERVAL" envDefault:"1s"`
	// ResetQuery runs when a session-mode client leaves, and in transaction
	// mode when a pinned client leaves.
	ResetQuery string `env:"POOL_RESET_QUERY" envDefault:"DISCARD ALL"`
	// PinPolicy says what transaction pooling does with session state it
	// cannot move between connections (LISTEN, advisory locks, temporary
	// tables, WITH HOLD cursors, SQL PREPARE): "pin" keeps the client on its
	// upstream connection, "error" refuses the statement with 0A000.
	PinPolicy string `env:"POOL_PIN_POLICY" envDefault:"pin"`
	// PreparedCacheSize bounds the protocol-level prepared statements kept
	// per upstream connection (LRU).
	PreparedCacheSize int           `env:"POOL_PREPARED_CACHE_SIZE" envDefault:"500"`
	ResetTimeout      time.Duration `env:"POOL_RESET_TIMEOUT" envDefault:"5s"`
}

// Admin configures the admin HTTP port.
type Admin struct {
	// Addr is host:port, or "off" for no admin port. Use Address, which
	// applies MetricsPort.
	Addr string `env:"ADMIN_ADDR" envDefault:":8001"`
	// MetricsPort, when set, replaces the port of Addr (the original
	// product's variable).
	MetricsPort string `env:"METRICS_PORT"`
	// MetricsEnabled serves /metrics; false removes the endpoint.
	MetricsEnabled bool `env:"METRICS_ENABLED" envDefault:"true"`
	// Token is the bearer token of every admin endpoint but /health,
	// /ready, /startup and /metrics. TokenFile is read instead, once at
	// startup (surrounding white space trimmed), when set. Without either
	// the admin port must listen on a loopback address.
	Token     Secret `env:"ADMIN_TOKEN"`
	TokenFile string `env:"ADMIN_TOKEN_FILE"`
	// Pprof serves Go's /debug/pprof/ profiles on the admin port. Off by
	// default: profiles reveal internals.
	Pprof bool `env:"ADMIN_PPROF" envDefault:"false"`
}

// AdminOff is the ADMIN_ADDR value that disables the admin port (an empty
// value means the default, as for every variable).
const AdminOff = "off"

// Enabled reports whether the admin port is served.
func (a Admin) Enabled() bool { return a.Addr != AdminOff && a.Addr != "" }

// Address returns the admin listen address: ADMIN_ADDR, with its port
// replaced by METRICS_PORT when that is set. It returns ADMIN_ADDR as is
// when that is not host:port (Validate reports it).
func (a Admin) Address() string {
	if a.MetricsPort == "" {
		return a.Addr
	}
	host, _, err := net.SplitHostPort(a.Addr)
	if err != nil {
		return a.Addr
	}
	return net.JoinHostPort(host, a.MetricsPort)
}

// Loopback reports whether Address listens only on a loopback interface:
// "localhost" or a loopback IP. An empty host (":8001"), an unspecified
// address (0.0.0.0, ::) and any other host name are not loopback.
func (a Admin) Loopback() bool {
	host, _, err := net.SplitHostPort(a.Address())
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// validate reports every problem with an enabled admin port.
func (a Admin) validate() []error {
	if !a.Enabled() {
		return nil
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, _, err := net.SplitHostPort(a.Addr); err != nil {
		add("ADMIN_ADDR %q: %v", a.Addr, err)
		return errs
	}
	if a.MetricsPort != "" {
		if p, err := strconv.Atoi(a.MetricsPort); err != nil || p < 0 || p > 65535 {
			add("METRICS_PORT %q is not a TCP port", a.MetricsPort)
			return errs
		}
	}
	if a.Token != "" && a.TokenFile != "" {
		add("ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set; set one")
	}
	if a.Token == "" && a.TokenFile == "" && !a.Loopback() {
		add("admin port %s (ADMIN_ADDR, METRICS_PORT) is not a loopback address: set ADMIN_TOKEN or ADMIN_TOKEN_FILE, "+
			"or listen on 127.0.0.1", a.Address())
	}
	return errs
}

// Load parses and validates the configuration from environ, a map of
// variable name to value. The error, if any, lists every problem.
func Load(environ map[string]string) (Config, error) {
	cfg, err := env.ParseAsWithOptions[Config](env.Options{Environment: environ})
	var problems []error
	if err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			for _, e := range agg.Errors {
				problems = append(problems, nameVariable(e))
			}
		} else {
			problems = append(problems, err)
		}
	}
	if verr := cfg.Validate(); verr != nil {
		problems = append(problems, verr)
	}
	if len(problems) > 0 {
		return cfg, &Error{Problems: flatten(problems)}
	}
	return cfg, nil
}

// nameVariable rewrites a parse error, which names the Go field, to name
// the environment variable instead.
func nameVariable(err error) error {
	var pe env.ParseError
	if !errors.As(err, &pe) {
		return err
	}
	keys := envKeys(reflect.TypeFor[Config](), pe.Name)
	if len(keys) == 0 {
		return err
	}
	return fmt.Errorf("%s: %v", strings.Join(keys, " or "), pe.Err)
}

// envKeys returns the env tags of the fields named name anywhere in t.
func envKeys(t reflect.Type, name string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Tag.Get("env") == "" {
			out = append(out, envKeys(f.Type, name)...)
			continue
		}
		if f.Name == name {
			if key, _, _ := strings.Cut(f.Tag.Get("env"), ","); key != "" {
				out = append(out, key)
			}
		}
	}
	return out
}

// Error is an invalid configuration. Its message lists every problem, one
// per line.
type Error struct{ Problems []error }

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("invalid configuration:")
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.Error())
	}
	return b.String()
}

func flatten(errs []error) []error {
	var out []error
	for _, e := range errs {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			out = append(out, flatten(j.Unwrap())...)
			continue
		}
		out = append(out, e)
	}
	return out
}

// Validate checks values that parsing alone cannot. It reports every
// problem joined with errors.Join, or nil.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c.Routing.validate(add)

	if c.DB.Host == "" {
		add("DB_HOST must not be empty")
	}
	if c.DB.Port < 1 || c.DB.Port > 65535 {
		add("DB_PORT %d is not a TCP port", c.DB.Port)
	}
	if c.DB.Name == "" {
		add("DB_NAME must not be empty")
	}
	if c.DB.User == "" {
		add("DB_USER must not be empty")
	}
	switch c.DB.SSLMode {
	case SSLRequire, SSLVerifyCA, SSLVerifyFull:
	default:
		add("DB_SSL_MODE %q is not one of require, verify-ca, verify-full (certificate authentication needs TLS)", c.DB.SSLMode)
	}
	if c.DB.CertDir == "" {
		add("LOCAL_CERT_DIR must name the directory holding client.crt, client.key and ca.crt")
	}
	if c.DB.ConnectTimeout <= 0 {
		add("DB_CONNECT_TIMEOUT must be positive")
	}
	if _, _, err := net.SplitHostPort(c.Listen.Addr); err != nil {
		add("LISTEN_ADDR %q: %v", c.Listen.Addr, err)
	}
	if (c.Listen.TLSCert == "") != (c.Listen.TLSKey == "") {
		add("CLIENT_TLS_CERT and CLIENT_TLS_KEY must be set together")
	}
	for _, s := range c.Listen.AllowedCIDRs {
		if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
			add("CLIENT_ALLOWED_CIDRS entry %q is not a CIDR prefix", s)
		}
	}
	if c.Listen.StartupTimeout <= 0 {
		add("CLIENT_STARTUP_TIMEOUT must be positive")
	}
	if c.Listen.IdleRelease <= 0 {
		add("CLIENT_IDLE_RELEASE must be positive")
	}
	if c.Listen.MaxClients < 1 {
		add("MAX_CLIENT_CONN must be at least 1")
	}
	switch c.Pool.PinPolicy {
	case PinPin, PinError:
	default:
		add("POOL_PIN_POLICY %q is not one of pin, error", c.Pool.PinPolicy)
	}
	if c.Pool.PreparedCacheSize < 1 {
		add("POOL_PREPARED_CACHE_SIZE must be at least 1")
	}
	switch c.Pool.Mode {
	case PoolSession, PoolTransaction:
	default:
		add("POOL_MODE %q is not one of session, transaction", c.Pool.Mode)
	}
	if c.Pool.Size < 1 {
		add("POOL_SIZE must be at least 1")
	}
	if c.Pool.MinIdle < 0 || c.Pool.MinIdle > c.Pool.Size {
		add("POOL_MIN_IDLE must be between 0 and POOL_SIZE (%d)", c.Pool.Size)
	}
	if c.Pool.IdleTimeout < 0 || c.Pool.MaxLifetime < 0 || c.Pool.LifetimeJitter < 0 {
		add("POOL_IDLE_TIMEOUT, POOL_MAX_LIFETIME and POOL_LIFETIME_JITTER must not be negative")
	}
	if c.Pool.CheckDelay < 0 {
		add("POOL_CHECK_DELAY must not be negative")
	}
	if c.Pool.AcquireTimeout <= 0 {
		add("POOL_ACQUIRE_TIMEOUT must be positive")
	}
	if c.Pool.RetireInterval <= 0 || c.Pool.ResetTimeout <= 0 {
		add("POOL_RETIRE_INTERVAL and POOL_RESET_TIMEOUT must be positive")
	}
	errs = append(errs, c.Admin.validate()...)
	errs = append(errs, c.validateLog()...)
	if c.ShutdownTimeout < 0 {
		add("SHUTDOWN_TIMEOUT must not be negative")
	}
	errs = append(errs, c.Vault.validate()...)
	errs = append(errs, c.Backup.validate()...)
	errs = append(errs, c.DBMetrics.validate()...)
	return errors.Join(errs...)
}

// validateLog reports a bad LOG_LEVEL or LOG_FORMAT.
func (c Config) validateLog() []error {
	var errs []error
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		errs = append(errs, fmt.Errorf("LOG_LEVEL %q is not one of debug, info, warn, error", c.LogLevel))
	}
	switch c.LogFormat {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("LOG_FORMAT %q is not one of json, console", c.LogFormat))
	}
	return errs
}

// Variables returns the name of every environment variable the
// configuration reads, sorted. Child processes that receive the
// configuration another way (the backup worker) get an environment
// without them.
func Variables() []string {
	var out []string
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
			switch {
			case key != "":
				out = append(out, key)
			case f.Type.Kind() == reflect.Struct:
				walk(f.Type)
			}
		}
	}
	walk(reflect.TypeFor[Config]())
	slices.Sort(out)
	return slices.Compact(out)
}
