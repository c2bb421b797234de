package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/router"
)

// The dev stack's shard map follows the stack's ports: a user's edit
// survives a rerun on the same ports, and a map naming another stack's
// servers (another --base-port) is set aside and written afresh, so the
// sidecar never routes to servers that are not there.
func TestDevShardMapFollowsTheStacksPorts(t *testing.T) {
	dir := t.TempDir()
	var log bytes.Buffer
	first := [][2]int{{25432, 25433}, {25442, 25443}}
	path, err := writeDevShardMap(dir, first, false, &log)
	if err != nil {
		t.Fatal(err)
	}
	text := readFile(t, path)
	for _, want := range []string{"127.0.0.1:25432", "127.0.0.1:25433", "127.0.0.1:25442", "127.0.0.1:25443"} {
		if !strings.Contains(text, want) {
			t.Errorf("new map lacks %s", want)
		}
	}
	if strings.Contains(text, "127.0.0.1:15432") {
		t.Error("new map still names the default port 15432")
	}
	if _, err := router.ParseMap([]byte(text)); err != nil {
		t.Fatalf("new map does not parse: %v", err)
	}

	edited := text + "\n# my override\n"
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := writeDevShardMap(dir, first, false, &log); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != edited {
		t.Error("a rerun on the same ports replaced the user's edited map")
	}
	if log.Len() != 0 {
		t.Errorf("a rerun on the same ports said %q", log.String())
	}

	second := [][2]int{{35432, 35433}, {35442, 35443}}
	if _, err := writeDevShardMap(dir, second, false, &log); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); !strings.Contains(got, "127.0.0.1:35443") || strings.Contains(got, "127.0.0.1:25432") {
		t.Errorf("the map was not rewritten for the new ports:\n%s", got)
	}
	if got := readFile(t, path+".old"); got != edited {
		t.Error("the stale map was not kept as shardmap.yaml.old")
	}
	if !strings.Contains(log.String(), "another --base-port") {
		t.Errorf("the rewrite was not reported; log: %q", log.String())
	}

	// --sync-replication marks every shard synchronous; a map that
	// disagrees is rewritten.
	if _, err := writeDevShardMap(dir, second, true, &log); err != nil {
		t.Fatal(err)
	}
	m, err := router.ParseMap([]byte(readFile(t, path)))
	if err != nil {
		t.Fatalf("synchronous map does not parse: %v", err)
	}
	for _, sh := range m.Shards {
		if !sh.Synchronous {
			t.Errorf("%s is not synchronous with --sync-replication", sh.Name)
		}
	}
	if _, err := writeDevShardMap(dir, second, false, &log); err != nil {
		t.Fatal(err)
	}
	if m, err := router.ParseMap([]byte(readFile(t, path))); err != nil || m.Shards[0].Synchronous {
		t.Errorf("without --sync-replication the map still marks shards synchronous (%v)", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Clean(path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
