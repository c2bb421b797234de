package worker

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/backup"
)

// chunkReader returns its data a few bytes at a time, to exercise the
// hold-back across reads.
type chunkReader struct {
	data []byte
	n    int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(r.n, len(p), len(r.data))
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}

func TestFeedVerifiedWithholdsTheTailUntilTheWholeObjectMatches(t *testing.T) {
	data := bytes.Repeat([]byte("pg_dump custom archive "), 1000)
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	for _, chunk := range []int{1, 7, 64, 100, 1 << 20} {
		var dst bytes.Buffer
		if err := feedVerified(&dst, &chunkReader{data: data, n: chunk}, int64(len(data)), want); err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		if !bytes.Equal(dst.Bytes(), data) {
			t.Fatalf("chunk %d: output differs from input", chunk)
		}

		corrupt := bytes.Clone(data)
		corrupt[100] ^= 1
		dst.Reset()
		err := feedVerified(&dst, &chunkReader{data: corrupt, n: chunk}, int64(len(data)), want)
		if !errors.Is(err, backup.ErrCorrupt) {
			t.Fatalf("chunk %d: corrupt stream: %v", chunk, err)
		}
		if dst.Len() != len(data)-holdBack {
			t.Fatalf("chunk %d: %d bytes reached pg_restore, want all but the last %d", chunk, dst.Len(), holdBack)
		}

		dst.Reset()
		longer := append(bytes.Clone(data), 'x')
		if err := feedVerified(&dst, &chunkReader{data: longer, n: chunk}, int64(len(data)), want); !errors.Is(err, backup.ErrCorrupt) {
			t.Fatalf("chunk %d: longer stream: %v", chunk, err)
		}
	}
	var dst bytes.Buffer
	short := []byte("tiny")
	if err := feedVerified(&dst, bytes.NewReader(short), 4, want); !errors.Is(err, backup.ErrCorrupt) || dst.Len() != 0 {
		t.Fatalf("short corrupt stream: %v, %d bytes written", err, dst.Len())
	}
}

func TestCertificateFilesArePrivateAndRemoved(t *testing.T) {
	target := pgTarget{tempDir: t.TempDir(), certs: func() ([]byte, []byte, []byte, error) {
		return []byte("CERT"), []byte("KEY"), []byte("CA"), nil
	}}
	c, err := target.writeCreds()
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{c.dir: 0o700 | os.ModeDir, c.key: 0o600, c.cert: 0o600, c.ca: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", filepath.Base(path), fi.Mode(), mode)
		}
	}
	if b, _ := os.ReadFile(c.key); string(b) != "KEY" {
		t.Errorf("key file holds %q", b)
	}
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
	if err := c.remove(); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Errorf("directory remains: %v", err)
	}

	target.certs = func() ([]byte, []byte, []byte, error) { return nil, nil, nil, errors.New("vault down") }
	if _, err := target.writeCreds(); err == nil || !strings.Contains(err.Error(), "vault down") {
		t.Errorf("writeCreds with a failing source = %v", err)
	}
	entries, _ := os.ReadDir(target.tempDir)
	if len(entries) != 0 {
		t.Errorf("left %d entries in the temp dir", len(entries))
	}
}

func TestConnectionStringsCheckTheServerNameAtTheShardAddress(t *testing.T) {
	target := pgTarget{database: "brownie_metadata", user: "brownie-fastapi-server", sslMode: "verify-full"}
	c := &credDir{cert: "/tmp/x y/client.crt", key: "/k", ca: "/ca"}
	got, err := target.conninfo(t.Context(), backup.Shard{Name: "s", Host: "10.0.0.7", Port: 5433, ServerName: "db.internal"}, "db", c,
		"options", "-c lock_timeout=60s")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"host=db.internal hostaddr=10.0.0.7 port=5433 dbname=db user=brownie-fastapi-server sslmode=verify-full",
		`sslcert='/tmp/x y/client.crt'`, "sslkey=/k", "sslrootcert=/ca", `options='-c lock_timeout=60s'`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("conninfo %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "password") {
		t.Errorf("conninfo has a password: %q", got)
	}
}
