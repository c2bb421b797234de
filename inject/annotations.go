package inject

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// Pod annotations. AnnotationInject opts a pod in; the others override the
// injector's defaults for that pod. Any other brownie.ai/ annotation on an
// opted-in pod is refused, so a typo is reported instead of ignored.
const (
	AnnotationPrefix        = "brownie.ai/"
	AnnotationInject        = "brownie.ai/inject"
	AnnotationPoolMode      = "brownie.ai/pool-mode"
	AnnotationPoolSize      = "brownie.ai/pool-size"
	AnnotationVaultRole     = "brownie.ai/vault-role"
	AnnotationShardMap      = "brownie.ai/shard-map"
	AnnotationCertSecret    = "brownie.ai/cert-secret"
	AnnotationImage         = "brownie.ai/image"
	AnnotationCPURequest    = "brownie.ai/cpu-request"
	AnnotationCPULimit      = "brownie.ai/cpu-limit"
	AnnotationMemoryRequest = "brownie.ai/memory-request"
	AnnotationMemoryLimit   = "brownie.ai/memory-limit"
	// AnnotationStatus is written by the injector ("injected"); with the
	// sidecar container present it makes a second review a no-op.
	AnnotationStatus = "brownie.ai/status"
	// LabelInjected ("true") is added to injected pods, so a PodMonitor
	// and kubectl can select them.
	LabelInjected = "brownie.ai/injected"
)

// Annotations lists every annotation the injector reads or writes, for
// documentation and tests.
var Annotations = []string{
	AnnotationInject, AnnotationPoolMode, AnnotationPoolSize, AnnotationVaultRole, AnnotationShardMap,
	AnnotationCertSecret, AnnotationImage, AnnotationCPURequest, AnnotationCPULimit,
	AnnotationMemoryRequest, AnnotationMemoryLimit, AnnotationStatus,
}

// MaxPoolSize bounds brownie.ai/pool-size.
const MaxPoolSize = 10000

// The patterns are compiled at their first use: the package is linked into
// the sidecar, which never injects, and compiled patterns stay on the heap.
var (
	// dns1123Subdomain is a Kubernetes object name (ConfigMap, Secret).
	dns1123Subdomain = lazyRegexp(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// vaultRoleRE is a Vault role name.
	vaultRoleRE = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	// imageRE is an image reference: [registry[:port]/]path[:tag][@digest].
	imageRE = lazyRegexp(`^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`)
)

// lazyRegexp returns a function that compiles expr on its first call and
// returns the same *regexp.Regexp on every call. Safe for concurrent use.
func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// settings are the values one injection uses: the injector's defaults with
// the pod's annotations applied.
type settings struct {
	image                      string
	poolMode, poolSize         string // "" leaves the ConfigMap's value
	vaultRole                  string
	shardMap                   string // ConfigMap name, "" for none
	certSecret                 string
	cpuRequest, cpuLimit       string
	memoryRequest, memoryLimit string
}

// badAnnotation is a denial: the annotation and why it is refused.
type badAnnotation struct {
	key, value, why string
}

func (e *badAnnotation) Error() string {
	if e.value == "" {
		return fmt.Sprintf("annotation %s: %s", e.key, e.why)
	}
	return fmt.Sprintf("annotation %s: %q %s", e.key, e.value, e.why)
}

// defaults returns the settings of cfg, checking the values annotations
// could also set with the same rules; errors name the variables.
func defaults(cfg config.Inject) (settings, error) {
	none := func(v string) string { // "none": no request or limit
		if v == "none" {
			return ""
		}
		return v
	}
	s := settings{
		image: cfg.Image, shardMap: cfg.ShardMapName(),
		cpuRequest: none(cfg.CPURequest), cpuLimit: none(cfg.CPULimit),
		memoryRequest: none(cfg.MemoryRequest), memoryLimit: none(cfg.MemoryLimit),
	}
	if cfg.CertMode == config.InjectCertVault {
		s.vaultRole = cfg.VaultRole
	} else {
		s.certSecret = cfg.CertSecret
	}
	var problems []string
	check := func(name, value string, fn func(string) string) {
		if value == "" {
			return
		}
		if why := fn(value); why != "" {
			problems = append(problems, fmt.Sprintf("%s %q %s", name, value, why))
		}
	}
	check("INJECT_IMAGE", s.image, checkImage)
	check("INJECT_SHARD_MAP", s.shardMap, checkObjectName)
	check("INJECT_CONFIGMAP", cfg.ConfigMap, checkObjectName)
	check("INJECT_ADMIN_TOKEN_SECRET", cfg.AdminTokenSecret, checkObjectName)
	check("INJECT_CERT_SECRET", s.certSecret, checkObjectName)
	check("INJECT_VAULT_ROLE", s.vaultRole, checkVaultRole)
	check("INJECT_CPU_REQUEST", s.cpuRequest, checkQuantity)
	check("INJECT_CPU_LIMIT", s.cpuLimit, checkQuantity)
	check("INJECT_MEMORY_REQUEST", s.memoryRequest, checkQuantity)
	check("INJECT_MEMORY_LIMIT", s.memoryLimit, checkQuantity)
	if len(problems) == 0 {
		if why := checkBounds(s.cpuRequest, s.cpuLimit); why != "" {
			problems = append(problems, "INJECT_CPU_REQUEST "+why+" INJECT_CPU_LIMIT")
		}
		if why := checkBounds(s.memoryRequest, s.memoryLimit); why != "" {
			problems = append(problems, "INJECT_MEMORY_REQUEST "+why+" INJECT_MEMORY_LIMIT")
		}
	}
	if len(problems) > 0 {
		return s, fmt.Errorf("invalid injector configuration: %s", strings.Join(problems, "; "))
	}
	return s, nil
}

// apply returns base with the pod's annotations applied, or the first bad
// annotation (in name order, so the answer is stable).
func (base settings) apply(ann map[string]string, certMode string) (settings, error) {
	s := base
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := ann[k]
		var why string
		switch k {
		case AnnotationInject, AnnotationStatus:
			continue
		case AnnotationPoolMode:
			if v != config.PoolSession && v != config.PoolTransaction {
				why = "is not one of session, transaction"
			}
			s.poolMode = v
		case AnnotationPoolSize:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxPoolSize {
				why = fmt.Sprintf("is not a whole number between 1 and %d", MaxPoolSize)
			}
			s.poolSize = v
		case AnnotationVaultRole:
			if certMode != config.InjectCertVault {
				why = "needs the injector's Vault mode (INJECT_CERT_MODE=vault); this injector mounts the Secret " + base.certSecret
				break
			}
			why = checkVaultRole(v)
			s.vaultRole = v
		case AnnotationCertSecret:
			if certMode != config.InjectCertSecret {
				why = "needs the injector's Secret mode (INJECT_CERT_MODE=secret); this injector uses Vault"
				break
			}
			why = checkObjectName(v)
			s.certSecret = v
		case AnnotationShardMap:
			why = checkObjectName(v)
			s.shardMap = v
		case AnnotationImage:
			why = checkImage(v)
			s.image = v
		case AnnotationCPURequest:
			why = checkQuantity(v)
			s.cpuRequest = v
		case AnnotationCPULimit:
			why = checkQuantity(v)
			s.cpuLimit = v
		case AnnotationMemoryRequest:
			why = checkQuantity(v)
			s.memoryRequest = v
		case AnnotationMemoryLimit:
			why = checkQuantity(v)
			s.memoryLimit = v
		default:
			return s, &badAnnotation{key: k, why: "is not a known annotation (known: " +
				strings.Join(Annotations, ", ") + ")"}
		}
		if why != "" {
			return s, &badAnnotation{key: k, value: v, why: why}
		}
	}
	if why := checkBounds(s.cpuRequest, s.cpuLimit); why != "" {
		return s, &badAnnotation{key: pick(ann, AnnotationCPURequest, AnnotationCPULimit), value: ann[pick(ann, AnnotationCPURequest, AnnotationCPULimit)],
			why: fmt.Sprintf("leaves the CPU request %s %s the limit %s", s.cpuRequest, why, s.cpuLimit)}
	}
	if why := checkBounds(s.memoryRequest, s.memoryLimit); why != "" {
		return s, &badAnnotation{key: pick(ann, AnnotationMemoryRequest, AnnotationMemoryLimit), value: ann[pick(ann, AnnotationMemoryRequest, AnnotationMemoryLimit)],
			why: fmt.Sprintf("leaves the memory request %s %s the limit %s", s.memoryRequest, why, s.memoryLimit)}
	}
	return s, nil
}

// pick returns the first of keys present in ann, else the last key.
func pick(ann map[string]string, keys ...string) string {
	for _, k := range keys {
		if _, ok := ann[k]; ok {
			return k
		}
	}
	return keys[len(keys)-1]
}

func checkObjectName(v string) string {
	if len(v) > 253 || !dns1123Subdomain().MatchString(v) {
		return "is not a Kubernetes object name (lower-case letters, digits, '-' and '.', at most 253)"
	}
	return ""
}

func checkVaultRole(v string) string {
	if len(v) > 128 || !vaultRoleRE().MatchString(v) {
		return "is not a Vault role name (letters, digits, '_', '-', '.')"
	}
	return ""
}

func checkImage(v string) string {
	if len(v) > 512 || !imageRE().MatchString(v) {
		return "is not an image reference (registry/name:tag or @sha256:digest)"
	}
	return ""
}

func checkQuantity(v string) string {
	if _, err := parseQuantity(v); err != nil {
		return "is not a resource quantity (such as 250m, 0.5, 128Mi, 1Gi)"
	}
	return ""
}

// checkBounds reports a request above its limit ("is above").
func checkBounds(request, limit string) string {
	if request == "" || limit == "" {
		return ""
	}
	r, err1 := parseQuantity(request)
	l, err2 := parseQuantity(limit)
	if err1 == nil && err2 == nil && r > l {
		return "is above"
	}
	return ""
}
