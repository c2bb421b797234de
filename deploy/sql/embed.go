// Package schemasql embeds the SQL that creates the Brownie metadata database:
// the role (00_roles.sql) and the schema of Alembic revision d607e412e7b0
// (01_schema.sql). The dev command and the integration tests apply these same
// files, so what runs locally is what is documented for production.
//
// The package is named schemasql, not sql, so that importers can use it next
// to database/sql without an alias.
//
// It owns only the embedded files; applying them is the caller's job
// (internal/pgcluster does it with psql).
package schemasql

import (
	"embed"
	"io/fs"
	"sort"
)

//go:embed *.sql
var files embed.FS

// File is one embedded SQL script.
type File struct {
	// Name is the file name, for example "01_schema.sql".
	Name string
	// SQL is the file content.
	SQL string
}

// Files returns every embedded SQL script in name order, which is the order
// they must be applied in. Each call returns a fresh slice; it is safe for
// concurrent use.
func Files() []File {
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		panic(err) // The pattern is constant and valid.
	}
	sort.Strings(names)
	out := make([]File, 0, len(names))
	for _, name := range names {
		b, err := files.ReadFile(name)
		if err != nil {
			panic(err) // Embedded files are always readable.
		}
		out = append(out, File{Name: name, SQL: string(b)})
	}
	return out
}

// Lookup returns the embedded script called name, or false if there is none.
// It is safe for concurrent use.
func Lookup(name string) (File, bool) {
	b, err := files.ReadFile(name)
	if err != nil {
		return File{}, false
	}
	return File{Name: name, SQL: string(b)}, true
}

// Names of the embedded scripts, for callers that apply them one by one in
// different databases.
const (
	// RolesFile creates the roles; apply it in database "postgres".
	RolesFile = "00_roles.sql"
	// SchemaFile creates the schema; apply it in database "brownie_metadata".
	SchemaFile = "01_schema.sql"
	// SidecarFile creates the sidecar's own table (two-phase commit
	// decisions); apply it in database "brownie_metadata" after SchemaFile.
	SidecarFile = "02_sidecar.sql"
	// ShardedFile drops what a shard of several cannot keep (foreign keys
	// from replicated tables to sharded ones); apply it in database
	// "brownie_metadata" after SidecarFile.
	ShardedFile = "03_sharded.sql"
)
