package backup

import "syscall"

// workerProcAttr kills the worker when the sidecar dies, so that no worker
// outlives the process that answers its calls.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
