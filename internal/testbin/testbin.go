// Package testbin builds the module's commands for tests that run them as
// child processes (the sidecar runs the backup worker, brownie-backup, so
// the tests of package backup and internal/app run the real program).
// Builds use the go command and its build cache; each command is built
// once per test binary into a private temporary directory that Cleanup
// removes.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]string{}
)

// Build builds the main package pkg (an import path of this module) once
// and returns the path of the program. It is safe for concurrent use.
func Build(pkg string) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[pkg]; ok {
		return p, nil
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "brownie-testbin-")
		if err != nil {
			return "", err
		}
		dir = d
	}
	out := filepath.Join(dir, path.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out, nil
}

// Cleanup removes every program built so far. Call it from TestMain after
// the tests ran.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	dir = ""
	clear(built)
}
