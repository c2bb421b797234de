package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"

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

// Deps are the handler's collaborators.
type Deps struct {
	Log *zap.Logger
	// Gatherer serves /metrics; nil disables the endpoint.
	Gatherer prometheus.Gatherer
	// Checks decide /ready, all of which must pass.
	Checks []Check
	// Pprof serves /debug/pprof/.
	Pprof bool
}

// Handler serves the admin endpoints. Safe for concurrent use.
type Handler struct {
	mux  *http.ServeMux
	deps Deps
}

// New returns the admin handler.
func New(deps Deps) *Handler {
	h := &Handler{mux: http.NewServeMux(), deps: deps}
	h.mux.HandleFunc("GET /health", h.health)
	h.mux.HandleFunc("GET /ready", h.ready)
	if deps.Gatherer != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(deps.Gatherer, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(deps.Log)}))
	}
	if deps.Pprof {
		h.mux.HandleFunc("/debug/pprof/", pprof.Index)
		h.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		h.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// health is liveness: the process is up and serving HTTP.
func (h *Handler) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
