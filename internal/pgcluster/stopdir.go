package pgcluster

import (
	"context"
	"io"
	"os"
	"path/filepath"
)

// StopDir stops the server of the cluster whose home is dir, if one is
// running, without needing its Config: used to clean up after an earlier
// process (a dev stack killed without Ctrl-C) before reusing or deleting
// its files. A cluster that is not running is not an error.
func StopDir(ctx context.Context, dir string, log io.Writer) error {
	binDir, err := FindBinDir()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	c := &Cluster{cfg: Config{Log: log}, binDir: binDir, dir: abs, dataDir: filepath.Join(abs, "data")}
	if os.Geteuid() == 0 {
		if c.owner, err = lookupServerUser(); err != nil {
			return err
		}
	}
	return c.Stop(ctx)
}
