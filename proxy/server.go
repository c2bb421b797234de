package proxy

import (
	"context"
	"crypto/rand"
	cryptotls "crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/fanout"
	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/netx"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
	brownietls "github.com/brownie/brownie-sidecar/tls"
	"github.com/brownie/brownie-sidecar/twophase"
)

var randRead = rand.Read

// Config is what the proxy needs from the sidecar configuration.
type Config struct {
	Listen          config.Listen
	Pool            config.Pool
	Database        string // DB_NAME: the only database served
	User            string // DB_USER: the upstream role, the certificate CN
	SSLMode         string
	ConnectTimeout  time.Duration
	ShutdownTimeout time.Duration
	Routing         config.Routing
}

// Deps are the proxy's collaborators.
type Deps struct {
	Log     *zap.Logger
	Certs   brownietls.Source
	Router  *router.Router
	Metrics *metrics.Metrics
}

// Server accepts client connections and runs their sessions. Create it with
// New, open its listeners with Listen, then call Run once.
type Server struct {
	cfg     Config
	log     *zap.Logger
	router  *router.Router
	metrics *metrics.Metrics
	dialer  *dialer
	certs   brownietls.Source

	clientTLS *cryptotls.Config
	users     userList
	allowed   []netip.Prefix

	listeners []net.Listener
	analyzer  *analyzer
	health    *health.Checker
	twoPhase  *twophase.Recovery
	fan       *fanout.Deps // what requests spanning shards share
	reclaim   reclaimer    // collections after sessions go dormant (idle.go)
	dormancy  dormancy     // dormant sessions without a goroutine
	// idleEpoch is the idle sweep's clock (sweepIdle): it starts at 1 and
	// advances every half of CLIENT_IDLE_RELEASE.
	idleEpoch atomic.Uint64

	mu       sync.Mutex
	sessions map[uint32]*session // by sidecar backend PID
	pools    map[poolKey]*upstreamPool
	draining bool

	noSessions chan struct{} // closed when draining and the last session ends

	wg        sync.WaitGroup // client connections
	poolWG    sync.WaitGroup // pool maintenance
	poolCtx   context.Context
	poolStop  context.CancelFunc
	connected atomic.Bool // an upstream connection has succeeded at least once

	// schemaGen counts the schema changes the sidecar has seen: DDL sent
	// by its clients (when sent and again when its transaction ends), and
	// upstream errors that only a schema change made elsewhere causes
	// (see staleStatementError). Statements prepared under different
	// generations never share an upstream statement.
	schemaGen atomic.Uint64

	// backendClients maps an upstream backend (server address and pid) to
	// its pooled connection, registered once when dialled and removed when
	// closed; the connection's served field holds the sidecar pid of the
	// client it last served, so a notification from it names the pid that
	// client was given.
	backendClients sync.Map // backendKey → *upstream
	// answers holds, per host address, when a pooled connection to the
	// host last received the end of an answer (see upstream.noteAnswer),
	// for the health checks (lastAnswer).
	answers sync.Map // host address → *atomic.Int64

	// params interns the parameter values upstreams report (reportParams).
	params paramSets
	// settings interns the settings of clients' startup packets
	// (syncSettings).
	settings paramSets
}

// backendKey identifies a server backend.
type backendKey struct {
	addr string
	pid  uint32
}

// schemaChanged starts a new schema generation: statements clients
// prepare from now on are prepared afresh on every upstream. Safe for
// concurrent use.
func (s *Server) schemaChanged() {
	s.schemaGen.Add(1)
	s.metrics.SchemaChanges.Inc()
}

type poolKey struct {
	target         router.Target
	database, user string
}

type upstreamPool = pool.Pool[*upstream]

// New validates the proxy configuration and loads client-side TLS and
// credentials. It opens no sockets.
func New(cfg Config, deps Deps) (*Server, error) {
	s := &Server{
		cfg: cfg, log: deps.Log, router: deps.Router, metrics: deps.Metrics, certs: deps.Certs,
		sessions: map[uint32]*session{}, pools: map[poolKey]*upstreamPool{}, analyzer: newAnalyzer(10000),
		dialer: &dialer{certs: deps.Certs, sslMode: cfg.SSLMode, database: cfg.Database, user: cfg.User,
			timeout: cfg.ConnectTimeout, now: time.Now, stmtCacheSize: cfg.Pool.PreparedCacheSize},
	}
	s.poolCtx, s.poolStop = context.WithCancel(context.Background())
	s.idleEpoch.Store(1) // 0 marks a session not waiting (sweepIdle)
	s.dormancy.log, s.dormancy.wake = s.log, func(p parked) { go p.ss.run(p.conn) }
	s.health = health.New(health.Config{
		Interval: cfg.Routing.HealthInterval, Timeout: cfg.Routing.HealthTimeout, BanTime: cfg.Routing.BanTime,
		MaxLag: cfg.Routing.MaxReplicaLag, MaxLagBytes: cfg.Routing.MaxReplicaLagBytes,
		ReplicaSelection: cfg.Routing.ReplicaSelection,
	}, health.Deps{Router: deps.Router, Metrics: deps.Metrics, Log: deps.Log.Named("health"), Dial: s.dialHealth, HostDown: s.hostDown, Answered: s.lastAnswer})
	s.fan = &fanout.Deps{Router: deps.Router, Primary: s.primaryTarget, Catalog: fanout.NewCatalog(deps.Router, s.onPrimary), Metrics: fanout.Metrics{
		FanOuts: deps.Metrics.FanOuts, FanOutShards: deps.Metrics.FanOutShards, TwoPhaseCommits: deps.Metrics.TwoPhaseCommits,
		CrossShardTx: deps.Metrics.CrossShardTx, MergedReads: deps.Metrics.MergedReads, Refused: deps.Metrics.Refused,
		Errors: deps.Metrics.Errors, ToClient: deps.Metrics.ToClient, ToUpstream: deps.Metrics.ToUpstream,
	}}
	s.twoPhase = twophase.New(twophase.Config{Timeout: cfg.Routing.TwoPhaseTimeout, Interval: cfg.Routing.TwoPhaseRecoveryInterval},
		twophase.Deps{Router: deps.Router, OnPrimary: s.onPrimary, Metrics: deps.Metrics, Log: deps.Log})
	var errs []error
	if cfg.Listen.TLSCert != "" {
		cert, err := cryptotls.LoadX509KeyPair(cfg.Listen.TLSCert, cfg.Listen.TLSKey)
		if err != nil {
			errs = append(errs, fmt.Errorf("client TLS certificate: %w", err))
		}
		s.clientTLS = &cryptotls.Config{Certificates: []cryptotls.Certificate{cert}, MinVersion: cryptotls.VersionTLS12}
	}
	if cfg.Listen.AuthFile != "" {
		users, err := loadUserList(cfg.Listen.AuthFile)
		if err != nil {
			errs = append(errs, err)
		}
		s.users = users
	}
	for _, c := range cfg.Listen.AllowedCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			errs = append(errs, fmt.Errorf("CLIENT_ALLOWED_CIDRS: %w", err))
			continue
		}
		s.allowed = append(s.allowed, p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// clientListen turns TCP keepalive on for client connections with the
// kernel's timings, as PgBouncer's tcp_keepalive does. It is set once, on
// the listening socket, whose accepted sockets inherit it: a connection
// per request then pays no setsockopt for it (Go's per-connection
// keepalive is off). Go's accept still sets TCP_NODELAY on each.
var clientListen = net.ListenConfig{KeepAlive: -1, Control: keepAliveListener}

// keepAliveListener sets SO_KEEPALIVE on a listening socket.
func keepAliveListener(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setKeepAlive(fd) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_KEEPALIVE on the client listener: %w", serr)
	}
	return nil
}

// Listen opens the TCP listener and, when configured, the Unix socket
// .s.PGSQL.<port> in LISTEN_SOCKET_DIR (a stale socket file is replaced).
func (s *Server) Listen() error {
	ln, err := clientListen.Listen(context.Background(), "tcp", s.cfg.Listen.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen.Addr, err)
	}
	ln = netx.ListenFast(ln)
	s.listeners = append(s.listeners, ln)
	if dir := s.cfg.Listen.SocketDir; dir != "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		path := filepath.Join(dir, ".s.PGSQL."+port)
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		uln, err := net.Listen("unix", path)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen on unix socket %s: %w", path, err)
		}
		_ = os.Chmod(path, 0o777)
		s.listeners = append(s.listeners, netx.ListenFast(uln))
	}
	return nil
}

// Addrs returns the addresses being listened on (TCP first).
func (s *Server) Addrs() []net.Addr {
	out := make([]net.Addr, len(s.listeners))
	for i, ln := range s.listeners {
		out[i] = ln.Addr()
	}
	return out
}

// Ready returns nil when the proxy can serve: an upstream connection has
// succeeded and the proxy is not draining.
func (s *Server) Ready() error {
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	switch {
	case draining:
		return errors.New("draining")
	case !s.connected.Load():
		return errors.New("no upstream connection has succeeded yet")
	}
	return nil
}

// Run serves the listeners until ctx ends, then drains: listeners close,
// idle sessions get FATAL 57P01 at once, sessions inside a transaction get
// up to ShutdownTimeout to reach an idle point, then the rest are
// terminated. Run returns when every session has ended and every pool is
// closed.
func (s *Server) Run(ctx context.Context) error {
	if len(s.listeners) == 0 {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	var acceptWG sync.WaitGroup
	for _, ln := range s.listeners {
		acceptWG.Add(1)
		go func() {
			defer acceptWG.Done()
			s.accept(ln)
		}()
	}
	s.startHealth(s.poolCtx)
	s.poolWG.Add(1)
	go func() {
		defer s.poolWG.Done()
		s.sweepIdle(s.poolCtx)
	}()
	s.startTwoPhaseRecovery(s.poolCtx)
	warmCtx, stopWarm := context.WithCancel(ctx)
	acceptWG.Add(1)
	go func() {
		defer acceptWG.Done()
		s.warmUp(warmCtx)
	}()

	<-ctx.Done()
	stopWarm()
	s.log.Info("proxy draining", zap.Duration("shutdown_timeout", s.cfg.ShutdownTimeout))
	for _, ln := range s.listeners {
		ln.Close()
	}
	acceptWG.Wait()
	s.drain(s.cfg.ShutdownTimeout)
	s.wg.Wait()
	s.reclaim.stop()
	s.dormancy.stop()
	s.poolStop()
	s.mu.Lock()
	for _, p := range s.pools {
		p.Close()
	}
	s.mu.Unlock()
	s.poolWG.Wait()
	s.log.Info("proxy stopped")
	return nil
}

// warmUp opens one upstream connection to the default target so readiness
// reflects the upstream before the first client arrives, retrying with
// backoff until it succeeds or ctx ends.
func (s *Server) warmUp(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for !s.connected.Load() {
		t, ok := s.primaryTarget(s.router.Map().Shards[0].Name)
		var err error = errors.New("no shard")
		if ok {
			var c *pool.Conn[*upstream]
			c, err = s.pool(t).Acquire(ctx)
			if err == nil {
				c.Release()
				return
			}
		}
		s.log.Warn("upstream warm-up failed", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (s *Server) accept(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept failed", zap.Error(err))
			time.Sleep(50 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		s.metrics.ClientsAccepted.Inc()
		// The socket options are set: the listener's accept turns
		// TCP_NODELAY on, and keepalive is inherited from clientListen's
		// listening socket.
		s.wg.Add(1) // released by serve, or by the session it starts
		go s.serve(netx.WrapFast(conn))
	}
}

// pool returns the pool for target t, creating it (and its maintenance
// goroutine) on first use.
func (s *Server) pool(t router.Target) *upstreamPool {
	key := poolKey{target: t, database: s.cfg.Database, user: s.cfg.User}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pools[key]; ok {
		return p
	}
	pc := s.cfg.Pool
	p := pool.New(pool.Config{
		Size: pc.Size, MinIdle: pc.MinIdle, IdleTimeout: pc.IdleTimeout,
		MaxLifetime: pc.MaxLifetime, LifetimeJitter: pc.LifetimeJitter,
		AcquireTimeout: pc.AcquireTimeout, RetireInterval: pc.RetireInterval, CheckDelay: pc.CheckDelay,
		Generation: s.certGeneration,
	}, func(ctx context.Context) (*upstream, error) { return s.dialUpstream(ctx, t) })
	s.pools[key] = p
	s.poolWG.Add(1)
	go func() {
		defer s.poolWG.Done()
		_ = p.Run(s.poolCtx)
	}()
	return p
}

func (s *Server) certGeneration() uint64 {
	b, err := s.certs.Current()
	if err != nil {
		return 0
	}
	return b.Generation
}

// dialHealth opens a health checker's connection to t: application_name
// health.AppName, no pool, no dial metrics.
func (s *Server) dialHealth(ctx context.Context, t router.Target) (health.Conn, error) {
	u, err := s.dialer.dialAs(ctx, t, health.AppName)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return u, nil
}

func (s *Server) dialUpstream(ctx context.Context, t router.Target) (*upstream, error) {
	u, err := s.dialer.dial(ctx, t)
	if err != nil {
		s.metrics.UpstreamDials.WithLabelValues(t.Shard, t.Role.String(), errClass(err)).Inc()
		s.log.Warn("upstream dial failed", zap.String("shard", t.Shard), zap.String("role", t.Role.String()),
			zap.String("addr", t.Host.Addr), zap.Error(err))
		return nil, err
	}
	s.metrics.UpstreamDials.WithLabelValues(t.Shard, t.Role.String(), "ok").Inc()
	u.duration = s.metrics.QueryDuration.WithLabelValues(t.Shard, t.Role.String())
	u.clients = &s.backendClients
	u.answered = s.answerClock(t.Host.Addr)
	s.backendClients.Store(backendKey{t.Host.Addr, u.pid}, u)
	if !s.connected.Swap(true) {
		s.log.Info("upstream connected", zap.String("shard", t.Shard), zap.String("addr", t.Host.Addr))
	}
	s.log.Debug("upstream dialled", zap.String("shard", t.Shard), zap.String("role", t.Role.String()),
		zap.Uint32("backend_pid", u.pid), zap.String("cert_serial", u.serial))
	return u, nil
}

// answerClock returns the record of when a pooled connection to addr
// last got the end of an answer, creating it at the first call.
func (s *Server) answerClock(addr string) *atomic.Int64 {
	if v, ok := s.answers.Load(addr); ok {
		return v.(*atomic.Int64)
	}
	v, _ := s.answers.LoadOrStore(addr, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// lastAnswer returns when a pooled connection to addr last got the end of
// an answer (to within answerGrain), or the zero time when none has.
// Safe for concurrent use.
func (s *Server) lastAnswer(addr string) time.Time {
	v, ok := s.answers.Load(addr)
	if !ok {
		return time.Time{}
	}
	n := v.(*atomic.Int64).Load()
	if n == 0 {
		return time.Time{}
	}
	return clockBase.Add(time.Duration(n))
}

// minClientPID is the least pid of a sidecar backend key. Linux pids stay
// below 2^22 (its PID_MAX_LIMIT), so a client running
// pg_terminate_backend (or pg_cancel_backend) on the pid its driver
// reports never reaches a server backend, another client's least of all.
const minClientPID = 1 << 22

// register assigns the session a unique sidecar backend key. It fails when
// the server is draining or full.
func (s *Server) register(ss *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return errDraining
	}
	if len(s.sessions) >= s.cfg.Listen.MaxClients {
		return errTooManyClients
	}
	for {
		var b [8]byte
		if _, err := randRead(b[:]); err != nil {
			return err
		}
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7FFFFFFF
		if pid < minClientPID || s.sessions[pid] != nil {
			continue
		}
		ss.pid, ss.secret = pid, b[4:8]
		s.sessions[pid] = ss
		s.metrics.ClientsActive.Inc()
		return nil
	}
}

func (s *Server) unregister(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[ss.pid] == ss {
		delete(s.sessions, ss.pid)
		s.metrics.ClientsActive.Dec()
	}
	if s.draining && len(s.sessions) == 0 && s.noSessions != nil {
		close(s.noSessions)
		s.noSessions = nil
	}
}

// drain stops new sessions, terminates idle ones and waits up to timeout
// for the rest to become idle before terminating them too. It returns when
// no session is registered.
func (s *Server) drain(timeout time.Duration) {
	s.mu.Lock()
	s.draining = true
	done := make(chan struct{})
	if len(s.sessions) == 0 {
		close(done)
	} else {
		s.noSessions = done
	}
	all := s.sessionList()
	s.mu.Unlock()
	for _, ss := range all {
		ss.drain()
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	s.mu.Lock()
	rest := s.sessionList()
	s.mu.Unlock()
	s.log.Warn("shutdown timeout: terminating sessions", zap.Int("sessions", len(rest)))
	for _, ss := range rest {
		ss.terminate(errShutdown)
	}
	<-done
}

func (s *Server) sessionList() []*session {
	out := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, ss)
	}
	return out
}

// Close closes the listeners of a server whose Run was never called.
// Idempotent.
func (s *Server) Close() {
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
}
