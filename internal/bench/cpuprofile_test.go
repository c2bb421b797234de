package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"go.uber.org/goleak"
)

func TestProfileEndsOneSecondBeforeTheRunAndLastsAtLeastOne(t *testing.T) {
	for dur, want := range map[time.Duration]int{
		10 * time.Second: 9,
		5 * time.Second:  4, // the warm-up
		2 * time.Second:  1,
		time.Second:      1,
	} {
		if got := profileSeconds(dur); got != want {
			t.Errorf("profileSeconds(%s) = %d, want %d", dur, got, want)
		}
	}
}

func TestSidecarsServePprofOnlyWhenProfiled(t *testing.T) {
	env := sidecarTableEnv(modeTransaction, 10, false)
	if env["POOL_MODE"] != "transaction" || env["POOL_SIZE"] != "10" {
		t.Errorf("env = %v, want POOL_MODE=transaction POOL_SIZE=10", env)
	}
	if _, ok := env["ADMIN_PPROF"]; ok {
		t.Errorf("ADMIN_PPROF set without -cpu-profile: %v", env)
	}
	if env := sidecarTableEnv(modeSession, 60, true); env["ADMIN_PPROF"] != "true" {
		t.Errorf("ADMIN_PPROF = %q with -cpu-profile, want true", env["ADMIN_PPROF"])
	}

	o, err := parseFlags([]string{"-cpu-profile", "x.pgo"}, io.Discard)
	if err != nil || o.cpuProfile != "x.pgo" {
		t.Errorf("parseFlags(-cpu-profile x.pgo) = %q, %v", o.cpuProfile, err)
	}
}

// burn spends CPU until stop is closed.
func burn(stop <-chan struct{}) int {
	n := 0
	for {
		select {
		case <-stop:
			return n
		default:
		}
		for i := range 100000 {
			n += i % 7
		}
	}
}

// cpuProfileWithSamples profiles this process while it spins and returns a
// profile holding at least one sample, trying again until the deadline.
func cpuProfileWithSamples(t *testing.T) *profile.Profile {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var buf bytes.Buffer
		if err := pprof.StartCPUProfile(&buf); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		time.AfterFunc(200*time.Millisecond, func() { close(stop) })
		burn(stop)
		pprof.StopCPUProfile()
		p, err := profile.Parse(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Sample) > 0 {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatal("no CPU profile sample in 10 s of spinning")
		}
	}
}

// cpuSampleCount is the total of a CPU profile's sample counts.
func cpuSampleCount(p *profile.Profile) int64 {
	var n int64
	for _, s := range p.Sample {
		n += s.Value[0] // "samples/count", then "cpu/nanoseconds"
	}
	return n
}

func TestMergedProfileHoldsEverySampleOfItsParts(t *testing.T) {
	a, b := cpuProfileWithSamples(t), cpuProfileWithSamples(t)
	b.Sample = b.Sample[:1] // two different profiles, whatever the timing
	merged, err := mergeProfiles([]*profile.Profile{a, b})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "default.pgo")
	if err := os.WriteFile(path, []byte("an earlier profile"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeProfileFile(path, merged); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back, err := profile.Parse(f)
	if err != nil {
		t.Fatalf("written profile does not parse: %v", err)
	}
	if got, want := cpuSampleCount(back), cpuSampleCount(a)+cpuSampleCount(b); got != want {
		t.Errorf("merged profile has %d samples, want %d + %d", got, cpuSampleCount(a), cpuSampleCount(b))
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("directory holds %d files after the write, want only the profile", len(entries))
	}

	if _, err := mergeProfiles(nil); err == nil {
		t.Error("merging no profile succeeded")
	}
}

func TestCPUProfileIsFetchedFromTheAdminPortDuringARun(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	if f := startCPUProfile(context.Background(), target{name: "pgbouncer"}, 2*time.Second); f != nil {
		t.Error("a target without an admin address is profiled")
	}
	stop := make(chan struct{})
	go burn(stop)
	f := startCPUProfile(context.Background(), target{name: "sidecar", pprofAddr: addr}, 2*time.Second)
	p, err := f.wait()
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	// runtime/pprof times the profile from when its writer goroutine
	// starts, which may run a little after the handler began its
	// one-second sleep (998 ms on a loaded machine).
	if p.PeriodType == nil || p.PeriodType.Type != "cpu" || p.DurationNanos < int64(900*time.Millisecond) {
		t.Errorf("fetched profile: period type %v, duration %s; want a one-second CPU profile", p.PeriodType, time.Duration(p.DurationNanos))
	}

	// A sidecar without ADMIN_PPROF answers 404: an error, not a profile.
	if _, err := fetchCPUProfile(context.Background(), addr+"/nowhere", 1); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("fetch from a 404 = %v, want an error naming the status", err)
	}
}
