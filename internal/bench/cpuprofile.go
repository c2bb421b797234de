package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/pprof/profile"
)

// With -cpu-profile every sidecar of the session and transaction tables
// runs with ADMIN_PPROF=true, and each pgbench run against one of them
// (warm-up and connect rows included) fetches a CPU profile of the sidecar
// from its admin port while pgbench runs. At the end the profiles are
// merged into one pprof file, for `go tool pprof` or for `go build -pgo`.

// sidecarTableEnv is the environment a sidecar of the session or
// transaction table runs with, over startSidecar's defaults: the table's
// pool mode and size, and the admin port's /debug/pprof/ when the run
// profiles it.
func sidecarTableEnv(mode string, poolSize int, pprof bool) map[string]string {
	env := map[string]string{
		"POOL_MODE": mode, "POOL_SIZE": strconv.Itoa(poolSize), "MAX_CLIENT_CONN": "5000",
	}
	if pprof {
		env["ADMIN_PPROF"] = "true"
	}
	return env
}

// profileSeconds is the length, in whole seconds, of the CPU profile taken
// during a pgbench run of dur: one second shorter than the run, so that it
// covers the run's steady middle and ends before pgbench does, and at
// least one second.
func profileSeconds(dur time.Duration) int {
	return max(1, int((dur-time.Second)/time.Second))
}

// fetchCPUProfile takes a CPU profile of seconds from the sidecar whose
// admin port is adminAddr (host:port, /debug/pprof/ served without a token
// on loopback) and parses it. It blocks for the profile's length; ctx
// cancels it.
func fetchCPUProfile(ctx context.Context, adminAddr string, seconds int) (*profile.Profile, error) {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", adminAddr, seconds)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	p, err := profile.Parse(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return p, nil
}

// cpuProfileFetch is a CPU profile being fetched during one pgbench run.
type cpuProfileFetch struct {
	done chan struct{}
	p    *profile.Profile
	err  error
}

// startCPUProfile starts fetching a CPU profile of t's sidecar for a run
// of dur and returns at once; nil when t is not profiled. wait returns the
// result.
func startCPUProfile(ctx context.Context, t target, dur time.Duration) *cpuProfileFetch {
	if t.pprofAddr == "" {
		return nil
	}
	f := &cpuProfileFetch{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.p, f.err = fetchCPUProfile(ctx, t.pprofAddr, profileSeconds(dur))
	}()
	return f
}

// wait blocks until the fetch has ended and returns its profile or error.
func (f *cpuProfileFetch) wait() (*profile.Profile, error) {
	<-f.done
	return f.p, f.err
}

// collectProfile waits for f (nil: nothing to do) and keeps its profile
// for the merged -cpu-profile file. A failed fetch is logged with the run
// it belonged to and skipped.
func (b *bench) collectProfile(f *cpuProfileFetch, run string) {
	if f == nil {
		return
	}
	p, err := f.wait()
	if err != nil {
		b.logf("  CPU profile of %s skipped: %v", run, err)
		return
	}
	b.profiles = append(b.profiles, p)
}

// mergeProfiles merges CPU profiles of the same binary into one.
func mergeProfiles(ps []*profile.Profile) (*profile.Profile, error) {
	if len(ps) == 0 {
		return nil, errors.New("no CPU profile fetched")
	}
	return profile.Merge(ps)
}

// writeCPUProfile merges the profiles collected during the run and writes
// them to path (gzipped protobuf, what `go build -pgo` reads), through a
// temporary file renamed into place, so a failure leaves an earlier file
// at path untouched.
func (b *bench) writeCPUProfile(path string) error {
	merged, err := mergeProfiles(b.profiles)
	if err != nil {
		return err
	}
	return writeProfileFile(path, merged)
}

// writeProfileFile writes p to path through a temporary file in the same
// directory renamed into place.
func writeProfileFile(path string, p *profile.Profile) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := p.Write(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
