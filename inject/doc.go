// Package inject is the sidecar injector: a Kubernetes mutating admission
// webhook that turns an AdmissionReview for a pod annotated
// brownie.ai/inject: "true" into a JSON patch adding the Brownie DB sidecar
// as a native sidecar (an init container with restartPolicy Always).
//
// It owns the review → patch translation (Injector.Review), the validation
// of the brownie.ai/ annotations, and the HTTP handler that serves reviews
// (Handler). It does not own the TLS listener or the certificate reload
// (internal/app wires them with tls.FileSource), and it never calls the
// Kubernetes API.
//
// The pod and the patch are handled with small local structs marshalled to
// JSON rather than the k8s.io/api types: linking those into the binary that
// runs in every pod costs about 9 MB of resident memory at start. The tests
// decode every patched pod strictly into the real k8s.io/api types, so a
// misspelt field fails them.
package inject
