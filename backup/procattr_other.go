//go:build !linux

package backup

import "syscall"

// workerProcAttr has nothing to add outside Linux.
func workerProcAttr() *syscall.SysProcAttr { return nil }
