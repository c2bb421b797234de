package inject

import (
	"math"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
)

// The injector checks quantities without linking apimachinery; its parser
// must accept what Kubernetes accepts (non-negative) and agree on the
// value. It refuses, on purpose, a bare suffix ("Mi", "m"), which
// Kubernetes reads as zero.
func TestQuantityParserAgreesWithKubernetes(t *testing.T) {
	for _, s := range []string{
		"0", "1", "250m", "0.5", ".5", "1.", "100Mi", "1Gi", "2Ki", "1.5Gi", "64M", "1k", "1e3", "1E3", "5e-2",
		"3Ti", "1Pi", "1Ei", "100n", "100u", "+1", "12345678",
		"", "-1", "1KiB", "Mi", "1 Gi", "1g", "1ki", "abc", "1.2.3", "0x10", "1e", "1Gi ", "m", "1mi",
	} {
		want, kerr := resource.ParseQuantity(s)
		got, err := parseQuantity(s)
		if kerr == nil && want.Sign() < 0 {
			if err == nil {
				t.Errorf("parseQuantity(%q) accepted a negative quantity", s)
			}
			continue
		}
		if s == "Mi" || s == "m" {
			if err == nil {
				t.Errorf("parseQuantity(%q) accepted a bare suffix", s)
			}
			continue
		}
		if (err == nil) != (kerr == nil) {
			t.Errorf("parseQuantity(%q) error %v, Kubernetes says %v", s, err, kerr)
			continue
		}
		if err != nil {
			continue
		}
		if w := want.AsApproximateFloat64(); math.Abs(got-w) > 1e-9*math.Max(1, math.Abs(w)) {
			t.Errorf("parseQuantity(%q) = %v, Kubernetes says %v", s, got, w)
		}
	}
}
