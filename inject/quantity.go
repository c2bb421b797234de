package inject

import (
	"fmt"
	"math"
	"strconv"
)

// quantityRE is the Kubernetes quantity grammar (resource.ParseQuantity):
// a signed decimal number followed by a binary suffix (Ki…Ei), a decimal
// suffix (n, u, m, "", k, M, G, T, P, E) or a decimal exponent (e3, E-2).
var quantityRE = lazyRegexp(`^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$`)

var quantityScale = map[string]float64{
	"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
}

// parseQuantity parses a non-negative Kubernetes resource quantity such as
// "250m", "0.5", "128Mi" or "1e3" and returns its value (cores or bytes)
// as a float64, precise enough to compare a request with a limit.
func parseQuantity(s string) (float64, error) {
	m := quantityRE().FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a Kubernetes quantity (such as 250m, 0.5, 128Mi, 1Gi)", s)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a Kubernetes quantity", s)
	}
	if n < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	suffix := m[2]
	scale, ok := quantityScale[suffix]
	if !ok { // exponent
		exp, err := strconv.Atoi(suffix[1:])
		if err != nil {
			return 0, fmt.Errorf("%q is not a Kubernetes quantity", s)
		}
		scale = math.Pow10(exp)
	}
	v := n * scale
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return v, nil
}
