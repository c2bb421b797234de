// Command brownie-backup is the backup worker that brownie-sidecar starts
// for each backup, restore and listing (see package backup/worker). It
// must be installed beside brownie-sidecar (or named by BACKUP_WORKER).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/brownie/brownie-sidecar/backup/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := worker.Main(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
