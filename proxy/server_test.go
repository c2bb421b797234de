package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"
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
