package admin

import (
	"errors"
	"net/http"

	"github.com/brownie/brownie-sidecar/backup"
)

// backupErrorStatus maps an error from Backups (the backup package's
// sentinels, wrapped or not) to the status to answer.
func backupErrorStatus(err error) int {
	switch {
	case errors.Is(err, backup.ErrBusy), errors.Is(err, backup.ErrExists):
		return http.StatusConflict
	case errors.Is(err, backup.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, backup.ErrConfirmRequired), errors.Is(err, backup.ErrInvalidName):
		return http.StatusBadRequest
	case errors.Is(err, backup.ErrCorrupt), errors.Is(err, backup.ErrShardMismatch):
		// The request is sound but this backup cannot be restored here;
		// nothing was touched and retrying will not help.
		return http.StatusUnprocessableEntity
	case errors.Is(err, backup.ErrDisabled):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}
