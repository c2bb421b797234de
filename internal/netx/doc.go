// Package netx holds socket helpers shared by the proxy and the benchmark's
// reference relays: WrapFast, which issues a stream socket's reads and
// writes as raw system calls on its non-blocking descriptor.
package netx
