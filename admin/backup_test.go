package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/brownie/brownie-sidecar/backup"
)

// backup.Service, which the backup package implements, is what the admin
// port is given.
var _ Backups = backup.Service(nil)

// fakeBackups records the calls the handler makes. Safe for concurrent use.
type fakeBackups struct {
	mu        sync.Mutex
	manifests map[string]backup.Manifest
	restores  []backup.RestoreRequest
	createErr error
	shardFail string // a shard whose restore fails
	panicOn   string // a method that panics
}

func newFakeBackups() *fakeBackups {
	t0 := time.Date(2026, 11, 27, 2, 0, 0, 0, time.UTC)
	return &fakeBackups{manifests: map[string]backup.Manifest{
		"brownie-20261127T020000Z": {Name: "brownie-20261127T020000Z", StartedAt: t0, FinishedAt: t0.Add(time.Minute),
			Database: "brownie_metadata", TotalBytes: 42,
			Shards: []backup.ShardManifest{{Shard: "shard-0", Object: "shard-0.dump", Bytes: 42, SHA256: "ab"}}},
	}}
}

func (f *fakeBackups) Create(context.Context) (*backup.Manifest, error) {
	if f.panicOn == "create" {
		panic("boom: secret internals")
	}
	if f.createErr != nil {
		return nil, f.createErr
	}
	m := backup.Manifest{Name: "brownie-20261128T020000Z", Database: "brownie_metadata"}
	f.mu.Lock()
	f.manifests[m.Name] = m
	f.mu.Unlock()
	return &m, nil
}

func (f *fakeBackups) List(context.Context) ([]backup.Manifest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []backup.Manifest
	for _, m := range f.manifests {
		out = append(out, m)
	}
	return out, nil
}

func (f *fakeBackups) Get(_ context.Context, name string) (*backup.Manifest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.manifests[name]
	if !ok {
		return nil, fmt.Errorf("backup %q: %w", name, backup.ErrNotFound)
	}
	return &m, nil
}

func (f *fakeBackups) Restore(ctx context.Context, req backup.RestoreRequest) (*backup.RestoreResult, error) {
	f.mu.Lock()
	f.restores = append(f.restores, req)
	f.mu.Unlock()
	if _, err := f.Get(ctx, req.BackupName); err != nil {
		return nil, err
	}
	res := &backup.RestoreResult{BackupName: req.BackupName, Database: req.TargetDatabase, OK: true}
	for _, s := range []string{"shard-0", "shard-1"} {
		sr := backup.ShardRestoreResult{Shard: s, OK: s != f.shardFail}
		if !sr.OK {
			sr.Error = "pg_restore: exit status 1"
			res.OK = false
		}
		res.Shards = append(res.Shards, sr)
	}
	return res, nil
}

func (f *fakeBackups) Status() backup.Status {
	return backup.Status{Provider: "local", Destination: "/backups", Schedule: "0 2 * * *", RetentionDays: 30}
}

func (f *fakeBackups) restoreCalls() []backup.RestoreRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]backup.RestoreRequest(nil), f.restores...)
}

const testToken = "t0ken-for-tests"

type response struct {
	code   int
	header http.Header
	body   string
}

// call runs one request through h with the bearer token tok ("" for none).
func call(t *testing.T, h http.Handler, method, path, tok, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return response{rec.Code, rec.Header(), rec.Body.String()}
}

// errorOf decodes a JSON error body, failing the test if the body is not
// one.
func errorOf(t *testing.T, r response) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q for %d %s", ct, r.code, r.body)
	}
	var e errorBody
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error == "" {
		t.Fatalf("body is not a JSON error: %d %q", r.code, r.body)
	}
	return e.Error
}

var protected = []struct{ method, path, body string }{
	{"GET", "/status", ""},
	{"POST", "/backup/create", ""},
	{"GET", "/backup/list", ""},
	{"GET", "/backup/brownie-20261127T020000Z", ""},
	{"POST", "/backup/restore", `{"backup_name":"brownie-20261127T020000Z","target_database":"restored"}`},
	{"GET", "/debug/pprof/", ""},
	{"GET", "/no-such-path", ""},
}

func TestEveryEndpointButTheProbesAndMetricsNeedsTheToken(t *testing.T) {
	fake := newFakeBackups()
	h := New(Deps{Token: testToken, Backups: fake, Pprof: true, Gatherer: prometheus.NewRegistry()})
	for _, ep := range protected {
		r := call(t, h, ep.method, ep.path, "", ep.body)
		if r.code != http.StatusUnauthorized || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s without a token: %d %q", ep.method, ep.path, r.code, r.header.Get("WWW-Authenticate"))
		}
		errorOf(t, r)
		for _, bad := range []string{"wrong", testToken + "x", testToken[:4]} {
			r = call(t, h, ep.method, ep.path, bad, ep.body)
			if r.code != http.StatusUnauthorized {
				t.Errorf("%s %s with a wrong token: %d", ep.method, ep.path, r.code)
			}
			if msg := errorOf(t, r); strings.Contains(msg, testToken) || strings.Contains(msg, bad) {
				t.Errorf("the error echoes a token: %q", msg)
			}
		}
		// Other schemes are not bearer tokens.
		req := httptest.NewRequest(ep.method, ep.path, strings.NewReader(ep.body))
		req.SetBasicAuth("admin", testToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("%s %s with basic auth: %d", ep.method, ep.path, rec.Code)
		}
		r = call(t, h, ep.method, ep.path, testToken, ep.body)
		if r.code == http.StatusUnauthorized || r.code == http.StatusForbidden {
			t.Errorf("%s %s with the token: %d %s", ep.method, ep.path, r.code, r.body)
		}
	}
	if len(fake.restoreCalls()) != 1 {
		t.Errorf("restore ran %d times, want once (with the token)", len(fake.restoreCalls()))
	}
	for _, path := range []string{"/health", "/ready", "/startup", "/metrics"} {
		if r := call(t, h, "GET", path, "", ""); r.code != http.StatusOK {
			t.Errorf("GET %s without a token: %d %s", path, r.code, r.body)
		}
		if r := call(t, h, "GET", path, "wrong", ""); r.code != http.StatusOK {
			t.Errorf("GET %s with a wrong token: %d", path, r.code)
		}
	}
	// The scheme is case-insensitive (RFC 7235).
	req := httptest.NewRequest("GET", "/status", nil)
	req.Header.Set("Authorization", "bearer "+testToken)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("lower-case scheme: %d", rec.Code)
	}
}

func TestWithoutATokenTheEndpointsAreOpen(t *testing.T) {
	h := New(Deps{Backups: newFakeBackups()})
	for _, ep := range protected[:5] {
		if r := call(t, h, ep.method, ep.path, "", ep.body); r.code >= 400 {
			t.Errorf("%s %s: %d %s", ep.method, ep.path, r.code, r.body)
		}
	}
}

func TestMetricsAreAbsentWhenDisabled(t *testing.T) {
	h := New(Deps{Token: testToken})
	r := call(t, h, "GET", "/metrics", "", "")
	if r.code != http.StatusNotFound {
		t.Fatalf("/metrics with no gatherer: %d", r.code)
	}
	errorOf(t, r)
}

func TestBackupCreateAnswers201WithTheManifest(t *testing.T) {
	h := New(Deps{Backups: newFakeBackups()})
	r := call(t, h, "POST", "/backup/create", "", "")
	var m backup.Manifest
	if r.code != http.StatusCreated || json.Unmarshal([]byte(r.body), &m) != nil || m.Name != "brownie-20261128T020000Z" {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if r := call(t, h, "GET", "/backup/create", "", ""); r.code != http.StatusMethodNotAllowed || r.header.Get("Allow") != "POST" {
		t.Errorf("GET /backup/create: %d Allow %q", r.code, r.header.Get("Allow"))
	}
}

func TestBackupCreateWhileBusyIs409(t *testing.T) {
	fake := newFakeBackups()
	fake.createErr = fmt.Errorf("shard-0: %w", backup.ErrBusy)
	r := call(t, New(Deps{Backups: fake}), "POST", "/backup/create", "", "")
	if r.code != http.StatusConflict {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if msg := errorOf(t, r); !strings.Contains(msg, "already running") {
		t.Errorf("error %q", msg)
	}
}

func TestBackupListAndGet(t *testing.T) {
	h := New(Deps{Backups: newFakeBackups()})
	r := call(t, h, "GET", "/backup/list", "", "")
	var list backupList
	if r.code != 200 || json.Unmarshal([]byte(r.body), &list) != nil || len(list.Backups) != 1 ||
		list.Backups[0].Shards[0].SHA256 != "ab" {
		t.Fatalf("list: %d %s", r.code, r.body)
	}
	r = call(t, h, "GET", "/backup/brownie-20261127T020000Z", "", "")
	var m backup.Manifest
	if r.code != 200 || json.Unmarshal([]byte(r.body), &m) != nil || m.TotalBytes != 42 {
		t.Fatalf("get: %d %s", r.code, r.body)
	}
	r = call(t, h, "GET", "/backup/brownie-19700101T000000Z", "", "")
	if r.code != http.StatusNotFound {
		t.Fatalf("unknown: %d %s", r.code, r.body)
	}
	errorOf(t, r)
	// An empty store lists [], not null.
	r = call(t, New(Deps{Backups: &fakeBackups{manifests: map[string]backup.Manifest{}}}), "GET", "/backup/list", "", "")
	if r.code != 200 || !strings.Contains(r.body, `"backups":[]`) {
		t.Fatalf("empty list: %d %s", r.code, r.body)
	}
}

func TestBackupEndpointsAnswer503WhenBackupsAreNotConfigured(t *testing.T) {
	h := New(Deps{Token: testToken})
	for _, ep := range protected[1:5] {
		r := call(t, h, ep.method, ep.path, testToken, ep.body)
		if r.code != http.StatusServiceUnavailable || errorOf(t, r) != "backups are not configured" {
			t.Errorf("%s %s: %d %s", ep.method, ep.path, r.code, r.body)
		}
	}
}

func TestMalformedRestoreRequestsAre400AndNeverReachBackups(t *testing.T) {
	fake := newFakeBackups()
	h := New(Deps{Backups: fake})
	for _, body := range []string{
		"",
		"{",
		"[]",
		`{"backup_name": 7}`,
		`{"backup_name": "brownie-20261127T020000Z", "target_database": "x", "force": true}`,
		`{"backup_name": "brownie-20261127T020000Z", "target_database": "x"} {}`,
		`{"target_database": "x"}`,
		`{"backup_name": "", "confirm": ""}`,
	} {
		r := call(t, h, "POST", "/backup/restore", "", body)
		if r.code != http.StatusBadRequest {
			t.Errorf("%q: %d %s", body, r.code, r.body)
			continue
		}
		if msg := errorOf(t, r); strings.Contains(msg, "goroutine") || strings.Contains(msg, ".go:") {
			t.Errorf("%q: error looks like a trace: %q", body, msg)
		}
	}
	big := `{"backup_name": "` + strings.Repeat("x", maxBodyBytes) + `", "target_database": "x"}`
	if r := call(t, h, "POST", "/backup/restore", "", big); r.code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", r.code)
	}
	if n := len(fake.restoreCalls()); n != 0 {
		t.Errorf("Backups.Restore called %d times for bad requests", n)
	}
}

func TestAnInPlaceRestoreWithoutConfirmNeverReachesBackups(t *testing.T) {
	fake := newFakeBackups()
	h := New(Deps{Backups: fake})
	for _, body := range []string{
		`{"backup_name": "brownie-20261127T020000Z"}`,
		`{"backup_name": "brownie-20261127T020000Z", "confirm": ""}`,
		`{"backup_name": "brownie-20261127T020000Z", "confirm": "yes"}`,
		`{"backup_name": "brownie-20261127T020000Z", "confirm": "brownie-20261127T020000"}`,
	} {
		r := call(t, h, "POST", "/backup/restore", "", body)
		if r.code != http.StatusBadRequest {
			t.Errorf("%s: %d %s", body, r.code, r.body)
			continue
		}
		if msg := errorOf(t, r); !strings.Contains(msg, "confirm") {
			t.Errorf("%s: error %q does not mention confirm", body, msg)
		}
	}
	if calls := fake.restoreCalls(); len(calls) != 0 {
		t.Fatalf("Backups.Restore was asked to restore: %+v", calls)
	}
	r := call(t, h, "POST", "/backup/restore", "", `{"backup_name": "brownie-20261127T020000Z", "confirm": "brownie-20261127T020000Z"}`)
	if r.code != http.StatusOK {
		t.Fatalf("confirmed in-place restore: %d %s", r.code, r.body)
	}
	if calls := fake.restoreCalls(); len(calls) != 1 || calls[0].TargetDatabase != "" || calls[0].Confirm != calls[0].BackupName {
		t.Fatalf("calls %+v", calls)
	}
}

func TestRestoreResults(t *testing.T) {
	fake := newFakeBackups()
	h := New(Deps{Backups: fake})
	body := `{"backup_name": "brownie-20261127T020000Z", "target_database": "restored"}`
	r := call(t, h, "POST", "/backup/restore", "", body)
	var res backup.RestoreResult
	if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &res) != nil || !res.OK || len(res.Shards) != 2 {
		t.Fatalf("restore: %d %s", r.code, r.body)
	}
	if r := call(t, h, "POST", "/backup/restore", "", `{"backup_name": "nope", "target_database": "restored"}`); r.code != http.StatusNotFound {
		t.Fatalf("unknown backup: %d %s", r.code, r.body)
	}
	fake.shardFail = "shard-1"
	r = call(t, h, "POST", "/backup/restore", "", body)
	var failed restoreFailure
	if r.code != http.StatusInternalServerError || json.Unmarshal([]byte(r.body), &failed) != nil ||
		failed.RestoreResult == nil || failed.OK || failed.Shards[1].Error == "" || failed.Error == "" {
		t.Fatalf("failed shard: %d %s", r.code, r.body)
	}
}

func TestAPanicIsA500JSONErrorAndIsLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	fake := newFakeBackups()
	fake.panicOn = "create"
	h := New(Deps{Log: zap.New(core), Backups: fake, Token: testToken})
	r := call(t, h, "POST", "/backup/create", testToken, "")
	if r.code != http.StatusInternalServerError || errorOf(t, r) != "internal error" {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if strings.Contains(r.body, "boom") || strings.Contains(r.body, "goroutine") {
		t.Fatalf("the panic leaks to the client: %s", r.body)
	}
	if logs.FilterMessage("admin handler panicked").Len() != 1 {
		t.Fatalf("panic not logged: %v", logs.All())
	}
	// Then the request itself is logged, with its status and no token.
	reqs := logs.FilterMessage("admin request").All()
	if len(reqs) != 1 || reqs[0].ContextMap()["status"] != int64(500) || reqs[0].ContextMap()["path"] != "/backup/create" {
		t.Fatalf("request log %v", reqs)
	}
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), testToken) {
			t.Fatalf("a log entry holds the token: %v", e.ContextMap())
		}
	}
}

func TestMutatingRequestsAreLoggedWithoutTheToken(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	h := New(Deps{Log: zap.New(core), Backups: newFakeBackups(), Token: testToken})
	call(t, h, "POST", "/backup/create", testToken, "")
	call(t, h, "POST", "/backup/restore", "wrong", `{}`)
	call(t, h, "GET", "/backup/list", testToken, "")
	reqs := logs.FilterMessage("admin request").All()
	if len(reqs) != 2 {
		t.Fatalf("got %d request logs, want the two POSTs: %v", len(reqs), reqs)
	}
	want := []struct {
		path   string
		status int64
	}{{"/backup/create", 201}, {"/backup/restore", 401}}
	for i, e := range reqs {
		f := e.ContextMap()
		if f["path"] != want[i].path || f["status"] != want[i].status || f["remote"] == "" || f["duration"] == nil {
			t.Errorf("log %d: %v", i, f)
		}
		if strings.Contains(fmt.Sprint(f), testToken) {
			t.Errorf("log %d holds the token: %v", i, f)
		}
	}
}

func TestStartupIs503UntilStarted(t *testing.T) {
	var mu sync.Mutex
	started := false
	h := New(Deps{Token: testToken, Started: func() bool { mu.Lock(); defer mu.Unlock(); return started }})
	r := call(t, h, "GET", "/startup", "", "")
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, `"starting"`) {
		t.Fatalf("before: %d %s", r.code, r.body)
	}
	mu.Lock()
	started = true
	mu.Unlock()
	if r := call(t, h, "GET", "/startup", "", ""); r.code != http.StatusOK {
		t.Fatalf("after: %d %s", r.code, r.body)
	}
	if r := call(t, New(Deps{}), "GET", "/startup", "", ""); r.code != http.StatusOK {
		t.Fatalf("no Started dependency: %d", r.code)
	}
}

func TestStatusAssemblesItsSections(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	h := New(Deps{
		Log: zap.New(core), Version: "1.2.3", StartedAt: time.Now().Add(-90 * time.Second), Backups: newFakeBackups(),
		Status: map[string]func() any{
			"pools":    func() any { return []map[string]any{{"shard": "shard-0", "size": 20}} },
			"sessions": func() any { return map[string]int{"active": 3} },
			"shards":   nil,
			"broken":   func() any { panic("section bug") },
		},
	})
	r := call(t, h, "GET", "/status", "", "")
	if r.code != 200 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"version":        `"1.2.3"`,
		"uptime_seconds": "90",
		"uptime":         `"1m30s"`,
		"sessions":       `{"active":3}`,
		"broken":         `{"error":"internal error"}`,
	} {
		if string(st[key]) != want {
			t.Errorf("%s = %s, want %s", key, st[key], want)
		}
	}
	if _, ok := st["shards"]; ok {
		t.Errorf("a nil section is shown: %s", st["shards"])
	}
	var b backup.Status
	if err := json.Unmarshal(st["backups"], &b); err != nil || b.Provider != "local" || b.RetentionDays != 30 {
		t.Errorf("backups section %s", st["backups"])
	}
	if logs.FilterMessage("status section panicked").Len() != 1 {
		t.Errorf("the broken section is not logged")
	}
	r = call(t, New(Deps{}), "GET", "/status", "", "")
	if !strings.Contains(r.body, `"backups":{"configured":false}`) {
		t.Errorf("no backups: %s", r.body)
	}
}

func TestUnknownMethodsAre405WithAllow(t *testing.T) {
	h := New(Deps{Backups: newFakeBackups()})
	r := call(t, h, "DELETE", "/backup/list", "", "")
	if r.code != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET" {
		t.Fatalf("%d Allow %q %s", r.code, r.header.Get("Allow"), r.body)
	}
	errorOf(t, r)
	r = call(t, h, "GET", "/backup/restore", "", "")
	if r.code != http.StatusMethodNotAllowed || r.header.Get("Allow") != "POST" {
		t.Fatalf("%d Allow %q", r.code, r.header.Get("Allow"))
	}
}

func TestBackupErrorsMapToStatuses(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{backup.ErrBusy, http.StatusConflict},
		{backup.ErrExists, http.StatusConflict},
		{backup.ErrNotFound, http.StatusNotFound},
		{backup.ErrInvalidName, http.StatusBadRequest},
		{backup.ErrConfirmRequired, http.StatusBadRequest},
		{backup.ErrCorrupt, http.StatusUnprocessableEntity},
		{backup.ErrShardMismatch, http.StatusUnprocessableEntity},
		{backup.ErrDisabled, http.StatusServiceUnavailable},
		{backup.ErrNoShards, http.StatusInternalServerError},
		{errors.New("pg_dump: exit status 1"), http.StatusInternalServerError},
	} {
		fake := newFakeBackups()
		fake.createErr = fmt.Errorf("shard-1: %w", tc.err)
		r := call(t, New(Deps{Backups: fake}), "POST", "/backup/create", "", "")
		if r.code != tc.code {
			t.Errorf("%v: %d, want %d", tc.err, r.code, tc.code)
		}
		if msg := errorOf(t, r); msg != fake.createErr.Error() {
			t.Errorf("%v: error %q", tc.err, msg)
		}
	}
}
