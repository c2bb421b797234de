//go:build !unix

package proxy

// setKeepAlive leaves the socket's options alone where they cannot be set
// this way.
func setKeepAlive(uintptr) error { return nil }
