package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"strings"

	schemasql "github.com/brownie/brownie-sidecar/deploy/sql"
)

const (
	// BrownieRole is the role the Brownie FastAPI server logs in as, and the
	// CN its client certificate must carry.
	BrownieRole = "brownie-fastapi-server"
	// BrownieDatabase is the Brownie metadata database.
	BrownieDatabase = "brownie_metadata"
)

// EnsureBrownieDatabase makes the running primary hold the Brownie metadata
// database: it applies deploy/sql/00_roles.sql in database postgres, creates
// database brownie_metadata owned by BrownieRole if it is missing, and applies
// deploy/sql/01_schema.sql, 02_sidecar.sql and 03_sharded.sql in it. It is idempotent. It fails on a replica,
// which receives the schema through replication.
func (c *Cluster) EnsureBrownieDatabase(ctx context.Context) error {
	if c.IsReplica() {
		return errors.New("pgcluster: EnsureBrownieDatabase must run on a primary")
	}
	roles, ok1 := schemasql.Lookup(schemasql.RolesFile)
	schema, ok2 := schemasql.Lookup(schemasql.SchemaFile)
	sidecar, ok3 := schemasql.Lookup(schemasql.SidecarFile)
	sharded, ok4 := schemasql.Lookup(schemasql.ShardedFile)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return errors.New("pgcluster: embedded schema files are missing")
	}
	if _, err := c.Exec(ctx, "postgres", roles.SQL); err != nil {
		return fmt.Errorf("%s: %w", roles.Name, err)
	}
	exists, err := c.Exec(ctx, "postgres",
		"SELECT 1 FROM pg_database WHERE datname = "+quoteLiteral(BrownieDatabase))
	if err != nil {
		return err
	}
	if exists == "" {
		// CREATE DATABASE cannot run inside a transaction or DO block, so it
		// is not part of 00_roles.sql.
		if _, err := c.Exec(ctx, "postgres",
			fmt.Sprintf(`CREATE DATABASE %s OWNER %s`, quoteIdent(BrownieDatabase), quoteIdent(BrownieRole))); err != nil {
			return err
		}
	}
	for _, f := range []schemasql.File{schema, sidecar, sharded} {
		if _, err := c.Exec(ctx, BrownieDatabase, f.SQL); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	return nil
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
