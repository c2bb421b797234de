package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/brownie/brownie-sidecar/internal/metrics"
)

// Client sockets get keepalive from the listening socket and TCP_NODELAY
// from Go's accept, with no per-connection option of the sidecar's own.
func TestAcceptedClientSocketsHaveKeepAliveAndNoDelay(t *testing.T) {
	ln, err := clientListen.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var keepAlive, noDelay int
	var kerr, nerr error
	if err := rc.Control(func(fd uintptr) {
		keepAlive, kerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		noDelay, nerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
	}); err != nil {
		t.Fatal(err)
	}
	if kerr != nil || nerr != nil {
		t.Fatalf("getsockopt: %v, %v", kerr, nerr)
	}
	if keepAlive == 0 || noDelay == 0 {
		t.Fatalf("accepted socket: SO_KEEPALIVE %d, TCP_NODELAY %d; want both on", keepAlive, noDelay)
	}
}

// A sidecar backend key's pid is never one a server backend can have, so
// pg_terminate_backend of the pid a driver reports reaches no backend.
func TestBackendKeyPidsAreAboveEveryLinuxPid(t *testing.T) {
	draws := [][]byte{
		{0x00, 0x00, 0x30, 0x39, 1, 2, 3, 4}, // 12345: a pid Postgres backends have
		{0x80, 0x3f, 0xff, 0xff, 1, 2, 3, 4}, // 2^22-1 once the sign bit is masked
		{0x00, 0x40, 0x00, 0x00, 5, 6, 7, 8}, // 2^22
	}
	defer func(r func([]byte) (int, error)) { randRead = r }(randRead)
	randRead = func(b []byte) (int, error) {
		copy(b, draws[0])
		draws = draws[1:]
		return len(b), nil
	}
	s := &Server{metrics: metrics.New(prometheus.NewRegistry()), sessions: map[uint32]*session{}}
	s.cfg.Listen.MaxClients = 10
	ss := &session{}
	if err := s.register(ss); err != nil {
		t.Fatal(err)
	}
	if ss.pid != 1<<22 || string(ss.secret) != "\x05\x06\x07\x08" {
		t.Fatalf("pid %d, secret %x; want the first draw at or above 2^22", ss.pid, ss.secret)
	}
}
