//go:build unix

package proxy

import "syscall"

// setKeepAlive turns SO_KEEPALIVE on for the socket fd.
func setKeepAlive(fd uintptr) error {
	return syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
}
