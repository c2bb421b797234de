package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadyIs503AndNamesEveryFailedCheck(t *testing.T) {
	proxyErr := errors.New("draining")
	h := New(Deps{Log: zap.NewNop(), Checks: []Check{
		{Name: "proxy", Ready: func() error { return proxyErr }},
		{Name: "certificate", Ready: func() error { return errors.New("expired") }},
		{Name: "router", Ready: func() error { return nil }},
	}})
	code, body := get(t, h, "/ready")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("code %d", code)
	}
	var r readiness
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if r.Status != "not ready" || len(r.Failed) != 2 || r.Failed[0] != "certificate" || r.Checks["router"] != "ok" || r.Checks["proxy"] != "draining" {
		t.Fatalf("body %+v", r)
	}
	proxyErr = nil
	h = New(Deps{Log: zap.NewNop(), Checks: []Check{{Name: "proxy", Ready: func() error { return proxyErr }}}})
	if code, _ := get(t, h, "/ready"); code != http.StatusOK {
		t.Fatalf("all checks pass but /ready is %d", code)
	}
}

func TestHealthMetricsAndUnknownPaths(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "brownie_sidecar_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	h := New(Deps{Log: zap.NewNop(), Gatherer: reg})
	if code, body := get(t, h, "/health"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Fatalf("/health %d %s", code, body)
	}
	if code, body := get(t, h, "/metrics"); code != 200 || !strings.Contains(body, "brownie_sidecar_test_total 1") {
		t.Fatalf("/metrics %d %s", code, body)
	}
	// Served uncompressed even to a scraper that accepts gzip (a gzip
	// writer costs about 800 KB of heap for a page of about 25 KB).
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Header().Get("Content-Encoding") != "" || !strings.Contains(rec.Body.String(), "brownie_sidecar_test_total 1") {
		t.Fatalf("/metrics with Accept-Encoding: gzip: %d %v", rec.Code, rec.Header())
	}
	if code, body := get(t, h, "/nope"); code != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("/nope %d %s", code, body)
	}
	if code, _ := get(t, h, "/debug/pprof/"); code != 404 {
		t.Fatalf("pprof served without ADMIN_PPROF: %d", code)
	}
	if code, _ := get(t, New(Deps{Log: zap.NewNop()}), "/metrics"); code != 404 {
		t.Fatalf("/metrics served with no gatherer: %d", code)
	}
}
