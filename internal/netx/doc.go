// Package netx holds socket helpers shared by the proxy and the benchmark's
// reference relays: WrapFast, which issues a stream socket's reads and
// writes as raw system calls on its non-blocking descriptor and releases
// it with raw calls on Close, and FastListener, which accepts connections
// with raw calls and returns them wrapped so. Both keep the socket calls of
// a connection out of the Go scheduler's system-call path, whose
// bookkeeping costs a proxy on one scheduler thread more than the calls
// (see fastConn and closeConn).
package netx
