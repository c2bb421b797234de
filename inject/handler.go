package inject

import (
	"errors"
	"io"
	"mime"
	"net/http"

	"go.uber.org/zap"
)

// Path is where the webhook answers reviews (the MutatingWebhookConfiguration's
// clientConfig.service.path).
const Path = "/inject"

// maxReviewBytes bounds a review body; the API server's own request limit
// is 3 MiB.
const maxReviewBytes = 4 << 20

// Handler serves POST Path with the injector. Anything but a JSON
// AdmissionReview gets a 4xx with a plain message (the API server then
// applies the webhook's failurePolicy); the review's own denials are 200
// answers with allowed=false. It is safe for concurrent use.
func Handler(in *Injector) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+Path, func(w http.ResponseWriter, r *http.Request) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			http.Error(w, "content type must be application/json", http.StatusUnsupportedMediaType)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
		if err != nil {
			http.Error(w, "review body: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		out, err := in.Review(body)
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, ErrBadReview) {
				status = http.StatusBadRequest
			}
			in.log.Warn("review refused", zap.Error(err))
			http.Error(w, err.Error(), status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
	return mux
}
