package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/backup"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// adminCall sends an admin API request with the bearer token (none when
// token is "") and returns the status and body.
func adminCall(t *testing.T, sc *sidecar, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx10(t), method, sc.admin+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// TestBackupAndRestoreOfTwoShardsThroughTheSidecar backs up a two-shard
// cluster through the running sidecar's admin API (local storage), lists
// it with the CLI, restores it into new databases and compares the rows.
func TestBackupAndRestoreOfTwoShardsThroughTheSidecar(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Shards: 2})
	ctx := context.Background()
	for i, sh := range srv.Shards {
		sql := fmt.Sprintf(`CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes SELECT g, 'shard %d row ' || g FROM generate_series(1, %d) g;
GRANT ALL ON notes TO "brownie-fastapi-server";`, i, 100+i*50)
		if _, err := sh.Primary.Exec(ctx, "brownie_metadata", sql); err != nil {
			t.Fatal(err)
		}
	}
	mapFile := filepath.Join(t.TempDir(), "shardmap.yaml")
	if err := os.WriteFile(mapFile, []byte(fmt.Sprintf(`unlisted_tables: replicated
shards:
  - {name: shard-0, primary: 127.0.0.1:%d}
  - {name: shard-1, primary: 127.0.0.1:%d}
`, srv.Shards[0].Primary.Port(), srv.Shards[1].Primary.Port())), 0o644); err != nil {
		t.Fatal(err)
	}
	const token = "s3cret-admin-token"
	dest := t.TempDir()
	sc := startSidecar(t, srv, map[string]string{
		"SHARD_MAP_FILE": mapFile, "ADMIN_TOKEN": token, "BACKUP_PROVIDER": "local",
		"BACKUP_DESTINATION": dest, "BACKUP_SCHEDULE": "off",
	})

	if code, _ := adminCall(t, sc, "POST", "/backup/create", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("create without a token: %d", code)
	}
	if code, _ := adminCall(t, sc, "POST", "/backup/create", "wrong", nil); code != http.StatusUnauthorized {
		t.Fatalf("create with a wrong token: %d", code)
	}
	code, body := adminCall(t, sc, "POST", "/backup/create", token, nil)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var m backup.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Shards) != 2 || m.Shards[0].SHA256 == "" || m.Shards[1].Bytes == 0 || m.Shards[0].SchemaVersion != "d607e412e7b0" {
		t.Fatalf("manifest: %s", body)
	}

	// The CLI talks to the same API.
	var stdout, stderr bytes.Buffer
	addr := strings.TrimPrefix(sc.admin, "http://")
	if rc := Main(ctx, []string{"brownie-sidecar", "backup", "list", "--addr", addr},
		map[string]string{"ADMIN_ADDR": addr, "ADMIN_TOKEN": token}, IO{Stdout: &stdout, Stderr: &stderr}); rc != 0 {
		t.Fatalf("backup list: exit %d: %s", rc, stderr.String())
	}
	if !strings.Contains(stdout.String(), m.Name) {
		t.Fatalf("backup list does not show %s:\n%s", m.Name, stdout.String())
	}

	// Without confirm, an in-place restore is refused and nothing changes.
	code, body = adminCall(t, sc, "POST", "/backup/restore", token, map[string]string{"backup_name": m.Name})
	if code != http.StatusBadRequest {
		t.Fatalf("restore in place without confirm: %d %s", code, body)
	}
	e := &routingEnv{srv: srv}
	if got := e.direct(t, "shard-1", "SELECT count(*) FROM notes"); got != "150" {
		t.Fatalf("live shard-1 after a refused restore: %s rows", got)
	}

	code, body = adminCall(t, sc, "POST", "/backup/restore", token, map[string]string{"backup_name": m.Name, "target_database": "restored"})
	if code != http.StatusOK {
		t.Fatalf("restore: %d %s", code, body)
	}
	for i, sh := range srv.Shards {
		q := "SELECT string_agg(id || ':' || body, ',' ORDER BY id) FROM notes"
		live, err := sh.Primary.Exec(ctx, "brownie_metadata", q)
		if err != nil {
			t.Fatal(err)
		}
		restored, err := sh.Primary.Exec(ctx, "restored", q)
		if err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
		if live != restored || live == "" {
			t.Errorf("shard %d: restored rows differ from the source", i)
		}
	}

	code, body = adminCall(t, sc, "GET", "/status", token, nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"shard-1"`) || !strings.Contains(string(body), m.Name) {
		t.Errorf("status: %d %s", code, body)
	}
	if strings.Contains(string(body), token) {
		t.Errorf("status shows the token")
	}
}
