package app

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

func asPgError(err error, pe **pgconn.PgError) bool { return errors.As(err, pe) }
