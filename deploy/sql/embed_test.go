package schemasql_test

import (
	"strings"
	"testing"

	schemasql "github.com/brownie/brownie-sidecar/deploy/sql"
)

func TestFilesAreInApplyOrder(t *testing.T) {
	files := schemasql.Files()
	want := []string{schemasql.RolesFile, schemasql.SchemaFile, schemasql.SidecarFile, schemasql.ShardedFile}
	if len(files) != len(want) {
		t.Fatalf("got %d files, want %d", len(files), len(want))
	}
	for i, f := range files {
		if f.Name != want[i] {
			t.Fatalf("file %d is %q, want %q", i, f.Name, want[i])
		}
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
