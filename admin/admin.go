package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Check is one readiness condition. Ready returns nil when satisfied, or an
// error whose text is safe to publish (no secrets).
type Check struct {
	Name  string
	Ready func() error
}

// Deps are the handler's collaborators. Every field is optional.
type Deps struct {
	// Log receives panics and the mutating requests (backup create and
	// restore); nil discards.
	Log *zap.Logger
	// Gatherer serves /metrics; nil disables the endpoint (METRICS_ENABLED
	// false).
	Gatherer prometheus.Gatherer
	// Checks decide /ready, all of which must pass.
	Checks []Check
	// Pprof serves /debug/pprof/ (behind the token, like every endpoint
	// but /health, /ready, /startup and /metrics).
	Pprof bool
	// Started decides /startup: 200 once it returns true, 503 before. nil
	// means started. It must be cheap and safe for concurrent use.
	Started func() bool
	// Token is the bearer token every endpoint except /health, /ready,
	// /startup and /metrics requires. Empty leaves them open, which the
	// configuration allows only on a loopback address. The handler never
	// logs it.
	Token string
	// Version is shown by /status.
	Version string
	// StartedAt is when the process started, for the uptime /status shows;
	// zero means when New was called.
	StartedAt time.Time
	// Status holds the sections of GET /status by name ("pools",
	// "sessions", "shards", "certificate", ...). Each function is called
	// once per request, must be safe for concurrent use, should be fast and
	// must return something encoding/json can encode, with no secrets. A nil
	// function leaves its section out. A section named "backups" replaces
	// the one made from Backups.Status.
	Status map[string]func() any
	// Backups serves the /backup/ endpoints and the "backups" section of
	// /status; nil answers those endpoints with 503. Leave it a nil
	// interface when backups are not configured: a nil *backup.Manager
	// stored in it is not nil.
	Backups Backups
}

// Handler serves the admin endpoints. Safe for concurrent use; it keeps no
// state of its own besides its dependencies.
type Handler struct {
	mux       *http.ServeMux
	deps      Deps
	log       *zap.Logger
	tokenHash [sha256.Size]byte
	startedAt time.Time
}

// maxBodyBytes bounds every request body; the only body the API reads is a
// small restore request.
const maxBodyBytes = 64 << 10

// New returns the admin handler.
func New(deps Deps) *Handler {
	h := &Handler{mux: http.NewServeMux(), deps: deps, log: deps.Log, startedAt: deps.StartedAt}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.startedAt.IsZero() {
		h.startedAt = time.Now()
	}
	if deps.Token != "" {
		h.tokenHash = sha256.Sum256([]byte(deps.Token))
	}
	h.mux.HandleFunc("GET /health", h.health)
	h.mux.HandleFunc("GET /ready", h.ready)
	h.mux.HandleFunc("GET /startup", h.startup)
	if deps.Gatherer != nil {
		// Uncompressed: the page is about 25 KB, while a gzip writer
		// takes about 800 KB of heap, which promhttp pools between scrapes.
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(deps.Gatherer, promhttp.HandlerOpts{
			ErrorLog: zap.NewStdLog(h.log), DisableCompression: true}))
	}
	h.mux.HandleFunc("GET /status", h.status)
	h.mux.HandleFunc("POST /backup/create", h.backupCreate)
	h.mux.HandleFunc("GET /backup/list", h.backupList)
	h.mux.HandleFunc("POST /backup/restore", h.backupRestore)
	h.mux.HandleFunc("GET /backup/{name}", h.backupGet)
	if deps.Pprof {
		h.mux.HandleFunc("/debug/pprof/", pprof.Index)
		h.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		h.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	h.mux.HandleFunc("/", h.notFound)
	return h
}

// public reports whether path is served without a token: the probes and
// the Prometheus scrape.
func public(path string) bool {
	switch path {
	case "/health", "/ready", "/startup", "/metrics":
		return true
	}
	return false
}

// ServeHTTP implements http.Handler. It bounds the request body, checks the
// bearer token for every non-public path, turns a panic into a 500 JSON
// error, and logs every request that may change something (any method but
// GET and HEAD) with its path, status, duration and remote address.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			h.log.Error("admin handler panicked", zap.String("method", r.Method), zap.String("path", r.URL.Path),
				zap.Any("panic", v), zap.StackSkip("stack", 1))
			if !rec.wroteHeader {
				writeError(rec, http.StatusInternalServerError, "internal error")
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.log.Info("admin request", zap.String("method", r.Method), zap.String("path", r.URL.Path),
				zap.Int("status", rec.status()), zap.Duration("duration", time.Since(start)),
				zap.String("remote", r.RemoteAddr))
		}
	}()
	if r.Body != nil {
		r.Body = http.MaxBytesReader(rec, r.Body, maxBodyBytes)
	}
	if !public(r.URL.Path) && !h.authorize(rec, r) {
		return
	}
	h.mux.ServeHTTP(rec, r)
}

// authorize checks the bearer token in constant time and answers 401 when
// it is missing or wrong. It reports whether the request may proceed.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request) bool {
	if h.deps.Token == "" {
		return true
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="brownie-sidecar"`)
		writeError(w, http.StatusUnauthorized, "missing bearer token")
		return false
	}
	// Comparing hashes keeps the comparison constant-time whatever the
	// length of the token offered.
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(got[:], h.tokenHash[:]) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="brownie-sidecar", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "invalid bearer token")
		return false
	}
	return true
}

// notFound answers paths no route matches: 405 with Allow when the path
// exists for another method, 404 otherwise, both as JSON.
func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := h.mux.Handler(probe); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	writeError(w, http.StatusNotFound, "not found")
}

// health is liveness: the process is up and serving HTTP.
func (h *Handler) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// startup is the startup probe: 200 once the sidecar has finished starting.
func (h *Handler) startup(w http.ResponseWriter, _ *http.Request) {
	if h.deps.Started != nil && !h.deps.Started() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "started"})
}

type readiness struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
	Failed []string          `json:"failed,omitempty"`
}

// ready is 200 when every check passes and 503 with the failures otherwise.
func (h *Handler) ready(w http.ResponseWriter, _ *http.Request) {
	res := readiness{Status: "ready", Checks: map[string]string{}}
	for _, c := range h.deps.Checks {
		if err := c.Ready(); err != nil {
			res.Checks[c.Name] = err.Error()
			res.Failed = append(res.Failed, c.Name)
			continue
		}
		res.Checks[c.Name] = "ok"
	}
	code := http.StatusOK
	if len(res.Failed) > 0 {
		sort.Strings(res.Failed)
		res.Status = "not ready"
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, res)
}

// status assembles GET /status from the version, the uptime and the
// sections. A section that panics shows {"error": "internal error"} and is
// logged; the others are still served.
func (h *Handler) status(w http.ResponseWriter, _ *http.Request) {
	uptime := time.Since(h.startedAt).Truncate(time.Second)
	out := map[string]any{
		"version":        h.deps.Version,
		"started_at":     h.startedAt.UTC().Truncate(time.Second),
		"uptime":         uptime.String(),
		"uptime_seconds": int64(uptime.Seconds()),
	}
	if h.deps.Backups != nil {
		out["backups"] = h.section("backups", func() any { return h.deps.Backups.Status() })
	} else {
		out["backups"] = map[string]any{"configured": false}
	}
	for name, f := range h.deps.Status {
		if f != nil {
			out[name] = h.section(name, f)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) section(name string, f func() any) (v any) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("status section panicked", zap.String("section", name), zap.Any("panic", p), zap.StackSkip("stack", 1))
			v = map[string]string{"error": "internal error"}
		}
	}()
	return f()
}

// errorBody is every error response: {"error": "..."}.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// recorder remembers the status written, for the request log and to know
// whether a panic can still be answered.
type recorder struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.code, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wroteHeader {
		r.code, r.wroteHeader = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController (used by pprof) reach the
// connection's writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) status() int {
	if !r.wroteHeader {
		return http.StatusOK
	}
	return r.code
}

// isMaxBytes reports whether err comes from the body limit.
func isMaxBytes(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}
