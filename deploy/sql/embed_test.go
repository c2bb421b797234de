package schemasql_test

import (
	"strings"
	"testing"

	schemasql "github.com/brownie/brownie-sidecar/deploy/sql"
)

func TestFilesAreInApplyOrder(t *testing.T) {
	files := schemasql.Files()
	if len(files) != 3 {
		t.Fatalf("got %d files, want 3", len(files))
	}
	if files[0].Name != schemasql.RolesFile || files[1].Name != schemasql.SchemaFile || files[2].Name != schemasql.SidecarFile {
		t.Fatalf("got order %q, %q, %q", files[0].Name, files[1].Name, files[2].Name)
	}
	for _, f := range files {
		if strings.TrimSpace(f.SQL) == "" {
			t.Errorf("%s is empty", f.Name)
		}
		if strings.Contains(f.SQL, "\n\\") {
			t.Errorf("%s contains a psql meta-command; keep it plain SQL", f.Name)
		}
	}
}

func TestLookupFindsSchema(t *testing.T) {
	f, ok := schemasql.Lookup(schemasql.SchemaFile)
	if !ok || !strings.Contains(f.SQL, "'d607e412e7b0'") {
		t.Fatalf("schema file missing or without the alembic revision")
	}
	if _, ok := schemasql.Lookup("nope.sql"); ok {
		t.Fatal("Lookup found a file that does not exist")
	}
}
