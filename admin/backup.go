package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/backup"
)

// Backups is what the /backup/ endpoints and the "backups" section of
// /status need; backup.Service satisfies it. Implementations must be safe
// for concurrent use and report failures with the backup package's
// sentinel errors (wrapped or not), which the handler maps to statuses:
// ErrBusy and ErrExists 409, ErrNotFound 404, ErrConfirmRequired and
// ErrInvalidName 400, ErrCorrupt and ErrShardMismatch 422, ErrDisabled 503,
// anything else 500. Error texts are shown to the (authenticated) caller.
type Backups interface {
	// Create backs up every shard and returns the manifest once stored.
	Create(ctx context.Context) (*backup.Manifest, error)
	// List returns the stored backups, newest first.
	List(ctx context.Context) ([]backup.Manifest, error)
	// Get returns one backup's manifest.
	Get(ctx context.Context, name string) (*backup.Manifest, error)
	// Restore verifies and restores a backup. It may return a result and
	// an error together: the result then says which shards failed.
	Restore(ctx context.Context, req backup.RestoreRequest) (*backup.RestoreResult, error)
	// Status is cheap and never blocks on a running backup.
	Status() backup.Status
}

// backupList is the body of GET /backup/list.
type backupList struct {
	Backups []backup.Manifest `json:"backups"`
}

// restoreFailure is the body of a restore that ran and failed: the
// per-shard result plus the error.
type restoreFailure struct {
	*backup.RestoreResult
	Error string `json:"error"`
}

// backups returns the Backups dependency, or answers 503 and returns nil
// when backups are not configured.
func (h *Handler) backups(w http.ResponseWriter) Backups {
	if h.deps.Backups == nil {
		writeError(w, http.StatusServiceUnavailable, "backups are not configured")
	}
	return h.deps.Backups
}

// backupCreate runs a backup synchronously (the request's context bounds
// it) and answers 201 with its manifest.
func (h *Handler) backupCreate(w http.ResponseWriter, r *http.Request) {
	b := h.backups(w)
	if b == nil {
		return
	}
	m, err := b.Create(r.Context())
	if err != nil {
		h.writeBackupError(w, "backup create", err)
		return
	}
	writeJSON(w, http.StatusCreated, m)
}

// backupList answers 200 with every stored backup's manifest.
func (h *Handler) backupList(w http.ResponseWriter, r *http.Request) {
	b := h.backups(w)
	if b == nil {
		return
	}
	list, err := b.List(r.Context())
	if err != nil {
		h.writeBackupError(w, "backup list", err)
		return
	}
	if list == nil {
		list = []backup.Manifest{}
	}
	writeJSON(w, http.StatusOK, backupList{Backups: list})
}

// backupGet answers 200 with one backup's manifest, 404 when unknown.
func (h *Handler) backupGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == "create" || name == "restore" {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	b := h.backups(w)
	if b == nil {
		return
	}
	m, err := b.Get(r.Context(), name)
	if err != nil {
		h.writeBackupError(w, "backup get", err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// backupRestore decodes a backup.RestoreRequest strictly, refuses an
// in-place restore without confirm before asking Backups anything, and
// answers 200 with the result, or 500 with the result and the error when a
// shard failed.
func (h *Handler) backupRestore(w http.ResponseWriter, r *http.Request) {
	b := h.backups(w)
	if b == nil {
		return
	}
	var req backup.RestoreRequest
	if code, msg := decodeStrict(r.Body, &req); code != 0 {
		writeError(w, code, msg)
		return
	}
	switch {
	case req.BackupName == "":
		writeError(w, http.StatusBadRequest, "backup_name is required")
		return
	case req.TargetDatabase == "" && req.Confirm == "":
		writeError(w, http.StatusBadRequest, "restoring in place replaces the live database: set confirm to the backup name, "+
			"or name a new target_database")
		return
	case req.TargetDatabase == "" && req.Confirm != req.BackupName:
		writeError(w, http.StatusBadRequest, "confirm does not match backup_name")
		return
	}
	res, err := b.Restore(r.Context(), req)
	switch {
	case err != nil && res == nil:
		h.writeBackupError(w, "backup restore", err)
	case err != nil || !res.OK:
		msg := "restore failed"
		code := http.StatusInternalServerError
		if err != nil {
			msg = err.Error()
			code = backupErrorStatus(err)
		}
		h.log.Error("backup restore failed", zap.String("backup", req.BackupName), zap.String("error", msg))
		writeJSON(w, code, restoreFailure{RestoreResult: res, Error: msg})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// writeBackupError answers with the status backupErrorStatus chooses and
// the error's text: the caller holds the admin token and needs to know why
// a backup failed (the backup package keeps secrets out of its errors).
func (h *Handler) writeBackupError(w http.ResponseWriter, op string, err error) {
	code := backupErrorStatus(err)
	if code >= http.StatusInternalServerError {
		h.log.Error("backup request failed", zap.String("op", op), zap.Error(err))
	}
	writeError(w, code, err.Error())
}

// decodeStrict decodes exactly one JSON object with no unknown fields from
// body. It returns 0 on success, or the status and message to answer.
func decodeStrict(body io.Reader, v any) (int, string) {
	if body == nil {
		return http.StatusBadRequest, "request body must be a JSON object"
	}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if dec.Decode(&struct{}{}) != io.EOF {
			return http.StatusBadRequest, "request body must be a single JSON object"
		}
		return 0, ""
	}
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case isMaxBytes(err):
		return http.StatusRequestEntityTooLarge, "request body too large"
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, "request body must be a JSON object"
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, "malformed JSON"
	case errors.As(err, &typ):
		return http.StatusBadRequest, "field " + typ.Field + " has the wrong type"
	default:
		// DisallowUnknownFields reports `json: unknown field "x"`; its text
		// names only what the client sent.
		return http.StatusBadRequest, err.Error()
	}
}
