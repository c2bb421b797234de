package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// ContainerName is the injected container's name. A pod that already has
// a container of this name (and was not injected) is refused.
const ContainerName = "brownie-sidecar"

// Paths inside the injected container, and the names of the volumes the
// injector adds. App containers get the socket volume at SocketDir too.
const (
	SocketDir      = "/var/run/brownie"
	ShardMapDir    = "/etc/brownie/shardmap"
	ShardMapKey    = "brownie.yaml"
	CertDir        = "/etc/brownie/tls"
	VaultTokenDir  = "/var/run/secrets/brownie.ai/vault"
	TmpDir         = "/tmp"
	VolumeSocket   = "brownie-socket"
	VolumeTmp      = "brownie-tmp"
	VolumeShardMap = "brownie-shard-map"
	VolumeCerts    = "brownie-client-tls"
	VolumeVault    = "brownie-vault-token"
	// AppEnvAddr and AppEnvSocketDir tell app containers where the sidecar
	// listens (unless they already set them), e.g. for a DSN written as
	// postgresql://brownie-fastapi-server@/brownie_metadata?host=$(BROWNIE_SIDECAR_SOCKET_DIR).
	AppEnvAddr      = "BROWNIE_SIDECAR_ADDR"
	AppEnvSocketDir = "BROWNIE_SIDECAR_SOCKET_DIR"
)

// vaultTokenTTL is the lifetime of the projected token the sidecar logs in
// to Vault with; the kubelet renews it at 80%, and the sidecar re-reads it
// at each login.
const vaultTokenTTL = 3600

// Results counted by brownie_sidecar_injector_reviews_total.
const (
	ResultInjected        = "injected"
	ResultSkipped         = "skipped"
	ResultAlreadyInjected = "already_injected"
	ResultDenied          = "denied"
)

// Deps are the injector's collaborators.
type Deps struct {
	// Log receives one event per review that changes or refuses a pod;
	// nil discards.
	Log *zap.Logger
	// Registerer receives the injector's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Injector turns admission reviews into patches. It is immutable after New
// and safe for concurrent use.
type Injector struct {
	cfg      config.Inject
	base     settings
	log      *zap.Logger
	reviews  *prometheus.CounterVec
	duration prometheus.Histogram
}

// New returns an injector with cfg's defaults, after checking the values
// annotations may also set (image, names, quantities) with the same rules.
func New(cfg config.Inject, deps Deps) (*Injector, error) {
	base, err := defaults(cfg)
	if err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	in := &Injector{
		cfg: cfg, base: base, log: deps.Log,
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brownie_sidecar_injector_reviews_total",
			Help: "Admission reviews answered, by result (injected, skipped, already_injected, denied).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "brownie_sidecar_injector_review_duration_seconds",
			Help:    "Time to answer one admission review.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1},
		}),
	}
	for _, r := range []string{ResultInjected, ResultSkipped, ResultAlreadyInjected, ResultDenied} {
		in.reviews.WithLabelValues(r)
	}
	if deps.Registerer != nil {
		if err := deps.Registerer.Register(in.reviews); err != nil {
			return nil, err
		}
		if err := deps.Registerer.Register(in.duration); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// ErrBadReview is wrapped by Review's errors: the body is not an
// admission.k8s.io/v1 AdmissionReview with a request.
var ErrBadReview = errors.New("bad admission review")

// Review answers one AdmissionReview (admission.k8s.io/v1, JSON) with an
// AdmissionReview carrying the response: allowed with a JSON patch that
// adds the sidecar, allowed unchanged, or denied with a message naming the
// annotation or conflict. It returns an error wrapping ErrBadReview only
// when body is not a review it can answer. It does no I/O.
func (in *Injector) Review(body []byte) ([]byte, error) {
	start := time.Now()
	var rv review
	if err := json.Unmarshal(body, &rv); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadReview, err)
	}
	if rv.APIVersion != "admission.k8s.io/v1" || rv.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("%w: apiVersion %q kind %q, want admission.k8s.io/v1 AdmissionReview", ErrBadReview, rv.APIVersion, rv.Kind)
	}
	if rv.Request == nil || rv.Request.UID == "" {
		return nil, fmt.Errorf("%w: no request uid", ErrBadReview)
	}
	req := rv.Request
	resp, result := in.respond(req)
	resp.UID = req.UID
	in.reviews.WithLabelValues(result).Inc()
	in.duration.Observe(time.Since(start).Seconds())
	out, err := json.Marshal(review{APIVersion: rv.APIVersion, Kind: rv.Kind, Response: resp})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// respond decides one request.
func (in *Injector) respond(req *request) (*response, string) {
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != "CREATE" || len(req.Object) == 0 {
		return &response{Allowed: true}, ResultSkipped
	}
	var p pod
	if err := json.Unmarshal(req.Object, &p); err != nil {
		return deny(400, "BadRequest", "pod does not decode: "+err.Error()), ResultDenied
	}
	name := p.Metadata.Name
	if name == "" {
		name = p.Metadata.GenerateName + "*"
	}
	log := in.log.With(zap.String("namespace", req.Namespace), zap.String("pod", name))
	switch v := p.Metadata.Annotations[AnnotationInject]; v {
	case "", "false":
		return &response{Allowed: true}, ResultSkipped
	case "true":
	default:
		msg := (&badAnnotation{key: AnnotationInject, value: v, why: `is not "true" or "false"`}).Error()
		log.Info("injection denied", zap.String("reason", msg))
		return deny(400, "BadRequest", msg), ResultDenied
	}
	if in.alreadyInjected(&p) {
		return &response{Allowed: true}, ResultAlreadyInjected
	}
	s, err := in.base.apply(p.Metadata.Annotations, in.cfg.CertMode)
	if err != nil {
		log.Info("injection denied", zap.String("reason", err.Error()))
		return deny(400, "BadRequest", err.Error()), ResultDenied
	}
	ops, err := in.patch(&p, s)
	if err != nil {
		log.Info("injection denied", zap.String("reason", err.Error()))
		return deny(409, "Conflict", err.Error()), ResultDenied
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return deny(500, "InternalError", "patch: "+err.Error()), ResultDenied
	}
	log.Info("sidecar injected", zap.String("image", s.image), zap.String("shard_map", s.shardMap))
	return &response{Allowed: true, Patch: patch, PatchType: "JSONPatch"}, ResultInjected
}

func deny(code int32, reason, msg string) *response {
	return &response{Allowed: false, Result: &status{Status: "Failure", Message: msg, Reason: reason, Code: code}}
}

// alreadyInjected reports a pod this injector has patched: the status
// annotation and the sidecar as a native sidecar. A review of such a pod
// (a reinvocation, or a pod re-created from its own spec) changes nothing.
func (in *Injector) alreadyInjected(p *pod) bool {
	if p.Metadata.Annotations[AnnotationStatus] != "injected" || p.Spec.InitContainers == nil {
		return false
	}
	for _, c := range *p.Spec.InitContainers {
		if c.Name == ContainerName && c.RestartPolicy == "Always" {
			return true
		}
	}
	return false
}

// escape makes a JSON pointer token of s (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// patch returns the operations that add the sidecar to p, or an error
// naming a conflict (a container or volume of the injector's names).
// Operations only add, so they apply to the pod as reviewed.
func (in *Injector) patch(p *pod, s settings) ([]patchOp, error) {
	var inits []podContainer
	if p.Spec.InitContainers != nil {
		inits = *p.Spec.InitContainers
	}
	for _, c := range append(inits[:len(inits):len(inits)], p.Spec.Containers...) {
		if c.Name == ContainerName {
			return nil, fmt.Errorf("pod already has a container named %s: remove it or the %s annotation", ContainerName, AnnotationInject)
		}
	}
	vols := in.volumes(s)
	if p.Spec.Volumes != nil {
		for _, v := range *p.Spec.Volumes {
			for _, w := range vols {
				if v.Name == w.Name {
					return nil, fmt.Errorf("pod already has a volume named %s, which the sidecar needs", v.Name)
				}
			}
		}
	}

	var ops []patchOp
	add := func(path string, v any) { ops = append(ops, patchOp{Op: "add", Path: path, Value: v}) }

	// App containers, and the other init containers (at their current
	// indexes, before the sidecar is inserted in front of them), share
	// the socket volume and learn the sidecar's addresses.
	share := func(path string, c podContainer) {
		mount := volumeMount{Name: VolumeSocket, MountPath: SocketDir, ReadOnly: true}
		hasMount := false
		if c.VolumeMounts != nil {
			for _, m := range *c.VolumeMounts {
				hasMount = hasMount || m.MountPath == SocketDir
			}
		}
		switch {
		case hasMount:
		case c.VolumeMounts == nil:
			add(path+"/volumeMounts", []volumeMount{mount})
		default:
			add(path+"/volumeMounts/-", mount)
		}
		want := []envVar{{Name: AppEnvAddr, Value: in.cfg.SidecarListenAddr}, {Name: AppEnvSocketDir, Value: SocketDir}}
		var env []envVar
		for _, e := range want {
			set := false
			if c.Env != nil {
				for _, have := range *c.Env {
					set = set || have.Name == e.Name
				}
			}
			if !set {
				env = append(env, e)
			}
		}
		switch {
		case len(env) == 0:
		case c.Env == nil:
			add(path+"/env", env)
		default:
			for _, e := range env {
				add(path+"/env/-", e)
			}
		}
	}
	for i, c := range p.Spec.Containers {
		share("/spec/containers/"+strconv.Itoa(i), c)
	}
	for i, c := range inits {
		share("/spec/initContainers/"+strconv.Itoa(i), c)
	}

	sc := in.container(s)
	if p.Spec.InitContainers == nil {
		add("/spec/initContainers", []container{sc})
	} else {
		add("/spec/initContainers/0", sc)
	}
	if p.Spec.Volumes == nil {
		add("/spec/volumes", vols)
	} else {
		for _, v := range vols {
			add("/spec/volumes/-", v)
		}
	}
	if p.Metadata.Labels == nil {
		add("/metadata/labels", map[string]string{LabelInjected: "true"})
	} else {
		add("/metadata/labels/"+escape(LabelInjected), "true")
	}
	add("/metadata/annotations/"+escape(AnnotationStatus), "injected")
	return ops, nil
}

// volumes are the pod volumes the sidecar needs.
func (in *Injector) volumes(s settings) []volume {
	vols := []volume{
		{Name: VolumeSocket, EmptyDir: &emptyDir{Medium: "Memory", SizeLimit: "1Mi"}},
		{Name: VolumeTmp, EmptyDir: &emptyDir{SizeLimit: "64Mi"}},
	}
	if s.shardMap != "" {
		vols = append(vols, volume{Name: VolumeShardMap, ConfigMap: &configMapVolume{Name: s.shardMap,
			Items: []keyToPath{{Key: ShardMapKey, Path: ShardMapKey}}}})
	}
	if in.cfg.CertMode == config.InjectCertVault {
		mode := int32(0o400)
		vols = append(vols, volume{Name: VolumeVault, Projected: &projectedVolume{DefaultMode: &mode,
			Sources: []projection{{ServiceAccountToken: &serviceAccountToken{
				Audience: in.cfg.VaultAudience, ExpirationSeconds: vaultTokenTTL, Path: "token"}}}}})
	} else {
		// Readable by the sidecar's non-root user without touching the
		// pod's fsGroup; only the sidecar mounts it.
		mode := int32(0o444)
		vols = append(vols, volume{Name: VolumeCerts, Secret: &secretVolume{SecretName: s.certSecret, DefaultMode: &mode,
			Items: []keyToPath{{Key: "tls.crt", Path: "client.crt"}, {Key: "tls.key", Path: "client.key"}, {Key: "ca.crt", Path: "ca.crt"}}}})
	}
	return vols
}

// container is the sidecar, a native sidecar: an init container with
// restartPolicy Always, started (and ready, through its startup probe)
// before the app containers and stopped after them. Kubernetes sends it
// SIGTERM once the app containers have exited; the sidecar drains within
// SHUTDOWN_TIMEOUT, so it needs no preStop hook.
func (in *Injector) container(s settings) container {
	port := in.cfg.SidecarAdminPort
	env := []envVar{
		{Name: "LISTEN_ADDR", Value: in.cfg.SidecarListenAddr},
		{Name: "LISTEN_SOCKET_DIR", Value: SocketDir},
		{Name: "ADMIN_ADDR", Value: net.JoinHostPort("", strconv.Itoa(port))},
		{Name: "ADMIN_TOKEN", ValueFrom: &envVarSource{SecretKeyRef: &keySelector{Name: in.cfg.AdminTokenSecret, Key: "token"}}},
		{Name: "BACKUP_TEMP_DIR", Value: TmpDir},
	}
	if s.poolMode != "" {
		env = append(env, envVar{Name: "POOL_MODE", Value: s.poolMode})
	}
	if s.poolSize != "" {
		env = append(env, envVar{Name: "POOL_SIZE", Value: s.poolSize})
	}
	mounts := []volumeMount{{Name: VolumeSocket, MountPath: SocketDir}, {Name: VolumeTmp, MountPath: TmpDir}}
	if s.shardMap != "" {
		env = append(env, envVar{Name: "SHARD_MAP_FILE", Value: ShardMapDir + "/" + ShardMapKey})
		mounts = append(mounts, volumeMount{Name: VolumeShardMap, MountPath: ShardMapDir, ReadOnly: true})
	}
	if in.cfg.CertMode == config.InjectCertVault {
		env = append(env,
			envVar{Name: "VAULT_ENABLED", Value: "true"},
			envVar{Name: "VAULT_AUTH", Value: config.VaultAuthKubernetes},
			envVar{Name: "VAULT_K8S_ROLE", Value: s.vaultRole},
			envVar{Name: "VAULT_K8S_TOKEN_FILE", Value: VaultTokenDir + "/token"})
		mounts = append(mounts, volumeMount{Name: VolumeVault, MountPath: VaultTokenDir, ReadOnly: true})
	} else {
		env = append(env,
			envVar{Name: "VAULT_ENABLED", Value: "false"},
			envVar{Name: "LOCAL_CERT_DIR", Value: CertDir})
		mounts = append(mounts, volumeMount{Name: VolumeCerts, MountPath: CertDir, ReadOnly: true})
	}
	res := resources{Requests: map[string]string{}, Limits: map[string]string{}}
	set := func(m map[string]string, k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	set(res.Requests, "cpu", s.cpuRequest)
	set(res.Requests, "memory", s.memoryRequest)
	set(res.Limits, "cpu", s.cpuLimit)
	set(res.Limits, "memory", s.memoryLimit)
	if s.memoryLimit != "" {
		// The Go runtime collects harder as it nears the limit instead of
		// being OOM-killed.
		env = append(env, envVar{Name: "GOMEMLIMIT", ValueFrom: &envVarSource{ResourceFieldRef: &resourceFieldRef{Resource: "limits.memory"}}})
	}
	return container{
		Name:            ContainerName,
		Image:           s.image,
		ImagePullPolicy: in.cfg.ImagePullPolicy,
		Args:            []string{"run"},
		Ports:           []containerPort{{Name: "brownie-admin", ContainerPort: port, Protocol: "TCP"}},
		EnvFrom:         []envFromSource{{ConfigMapRef: &localRef{Name: in.cfg.ConfigMap}}},
		Env:             env,
		Resources:       res,
		VolumeMounts:    mounts,
		// /startup turns 200 once the listeners are open: the app
		// containers start after it.
		StartupProbe:   &probe{HTTPGet: httpGetAction{Path: "/startup", Port: port}, PeriodSeconds: 1, TimeoutSeconds: 1, FailureThreshold: 120},
		ReadinessProbe: &probe{HTTPGet: httpGetAction{Path: "/ready", Port: port}, PeriodSeconds: 5, TimeoutSeconds: 2, FailureThreshold: 2},
		LivenessProbe:  &probe{HTTPGet: httpGetAction{Path: "/health", Port: port}, PeriodSeconds: 10, TimeoutSeconds: 2, FailureThreshold: 3},
		RestartPolicy:  "Always",
		SecurityContext: &securityContext{
			RunAsNonRoot: true, RunAsUser: in.cfg.RunAsUser, RunAsGroup: in.cfg.RunAsUser,
			ReadOnlyRootFilesystem: true, AllowPrivilegeEscalation: false,
			Capabilities:   capabilities{Drop: []string{"ALL"}},
			SeccompProfile: &seccompProfile{Type: "RuntimeDefault"},
		},
		TerminationMessagePolicy: "FallbackToLogsOnError",
	}
}
