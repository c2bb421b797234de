package inject

import "encoding/json"

// The JSON shapes below are the subset of the Kubernetes API types
// (admission.k8s.io/v1 AdmissionReview, core/v1 Pod) the injector reads and
// writes, with the API's own field names. Decoding ignores the rest of the
// pod, which the patch never rewrites: every operation adds to a path.

// review is an admission.k8s.io/v1 AdmissionReview.
type review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *request  `json:"request,omitempty"`
	Response   *response `json:"response,omitempty"`
}

type groupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

type request struct {
	UID       string           `json:"uid"`
	Kind      groupVersionKind `json:"kind"`
	Namespace string           `json:"namespace,omitempty"`
	Name      string           `json:"name,omitempty"`
	Operation string           `json:"operation"`
	Object    json.RawMessage  `json:"object,omitempty"`
}

type response struct {
	UID       string   `json:"uid"`
	Allowed   bool     `json:"allowed"`
	Result    *status  `json:"status,omitempty"`
	Patch     []byte   `json:"patch,omitempty"` // base64 in JSON, as the API wants
	PatchType string   `json:"patchType,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

// status is a meta/v1 Status, the reason given with a denial.
type status struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Code    int32  `json:"code,omitempty"`
}

// pod is what the injector reads of a core/v1 Pod. Pointers to slices and
// maps tell an absent list (the patch must create it) from an empty one.
type pod struct {
	Metadata struct {
		Name         string             `json:"name,omitempty"`
		GenerateName string             `json:"generateName,omitempty"`
		Labels       *map[string]string `json:"labels,omitempty"`
		Annotations  map[string]string  `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		InitContainers *[]podContainer `json:"initContainers,omitempty"`
		Containers     []podContainer  `json:"containers"`
		Volumes        *[]struct {
			Name string `json:"name"`
		} `json:"volumes,omitempty"`
	} `json:"spec"`
}

type podContainer struct {
	Name          string         `json:"name"`
	RestartPolicy string         `json:"restartPolicy,omitempty"`
	Env           *[]envVar      `json:"env,omitempty"`
	VolumeMounts  *[]volumeMount `json:"volumeMounts,omitempty"`
}

// patchOp is one RFC 6902 JSON patch operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Written parts of a core/v1 Pod.

type container struct {
	Name                     string           `json:"name"`
	Image                    string           `json:"image"`
	ImagePullPolicy          string           `json:"imagePullPolicy,omitempty"`
	Args                     []string         `json:"args,omitempty"`
	Ports                    []containerPort  `json:"ports,omitempty"`
	EnvFrom                  []envFromSource  `json:"envFrom,omitempty"`
	Env                      []envVar         `json:"env,omitempty"`
	Resources                resources        `json:"resources"`
	VolumeMounts             []volumeMount    `json:"volumeMounts,omitempty"`
	StartupProbe             *probe           `json:"startupProbe,omitempty"`
	ReadinessProbe           *probe           `json:"readinessProbe,omitempty"`
	LivenessProbe            *probe           `json:"livenessProbe,omitempty"`
	RestartPolicy            string           `json:"restartPolicy,omitempty"`
	SecurityContext          *securityContext `json:"securityContext,omitempty"`
	TerminationMessagePolicy string           `json:"terminationMessagePolicy,omitempty"`
}

type containerPort struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
}

type envFromSource struct {
	ConfigMapRef *localRef `json:"configMapRef,omitempty"`
}

type localRef struct {
	Name     string `json:"name"`
	Optional *bool  `json:"optional,omitempty"`
}

type envVar struct {
	Name      string        `json:"name"`
	Value     string        `json:"value,omitempty"`
	ValueFrom *envVarSource `json:"valueFrom,omitempty"`
}

type envVarSource struct {
	SecretKeyRef     *keySelector      `json:"secretKeyRef,omitempty"`
	ResourceFieldRef *resourceFieldRef `json:"resourceFieldRef,omitempty"`
}

type keySelector struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

type resourceFieldRef struct {
	Resource string `json:"resource"`
}

type resources struct {
	Requests map[string]string `json:"requests,omitempty"`
	Limits   map[string]string `json:"limits,omitempty"`
}

type volumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}

type probe struct {
	HTTPGet          httpGetAction `json:"httpGet"`
	PeriodSeconds    int           `json:"periodSeconds,omitempty"`
	TimeoutSeconds   int           `json:"timeoutSeconds,omitempty"`
	FailureThreshold int           `json:"failureThreshold,omitempty"`
}

type httpGetAction struct {
	Path   string `json:"path"`
	Port   int    `json:"port"`
	Scheme string `json:"scheme,omitempty"`
}

type securityContext struct {
	RunAsNonRoot             bool            `json:"runAsNonRoot"`
	RunAsUser                int64           `json:"runAsUser"`
	RunAsGroup               int64           `json:"runAsGroup"`
	ReadOnlyRootFilesystem   bool            `json:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation bool            `json:"allowPrivilegeEscalation"`
	Capabilities             capabilities    `json:"capabilities"`
	SeccompProfile           *seccompProfile `json:"seccompProfile,omitempty"`
}

type capabilities struct {
	Drop []string `json:"drop"`
}

type seccompProfile struct {
	Type string `json:"type"`
}

type volume struct {
	Name      string           `json:"name"`
	EmptyDir  *emptyDir        `json:"emptyDir,omitempty"`
	ConfigMap *configMapVolume `json:"configMap,omitempty"`
	Secret    *secretVolume    `json:"secret,omitempty"`
	Projected *projectedVolume `json:"projected,omitempty"`
}

type emptyDir struct {
	Medium    string `json:"medium,omitempty"`
	SizeLimit string `json:"sizeLimit,omitempty"`
}

type keyToPath struct {
	Key  string `json:"key"`
	Path string `json:"path"`
}

type configMapVolume struct {
	Name  string      `json:"name"`
	Items []keyToPath `json:"items,omitempty"`
}

type secretVolume struct {
	SecretName  string      `json:"secretName"`
	Items       []keyToPath `json:"items,omitempty"`
	DefaultMode *int32      `json:"defaultMode,omitempty"`
}

type projectedVolume struct {
	Sources     []projection `json:"sources"`
	DefaultMode *int32       `json:"defaultMode,omitempty"`
}

type projection struct {
	ServiceAccountToken *serviceAccountToken `json:"serviceAccountToken,omitempty"`
}

type serviceAccountToken struct {
	Audience          string `json:"audience,omitempty"`
	ExpirationSeconds int64  `json:"expirationSeconds,omitempty"`
	Path              string `json:"path"`
}
