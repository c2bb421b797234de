package netx

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, the first
// wrapped as a fastConn.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	fc := WrapFast(c)
	if _, ok := fc.(*fastConn); !ok {
		t.Fatalf("WrapFast(%T) did not wrap", c)
	}
	t.Cleanup(func() { fc.Close(); peer.Close() })
	return fc, peer
}

func TestFastConnMovesLargeWritesBothWays(t *testing.T) {
	fc, peer := tcpPair(t)
	exchange(t, fc, peer, 8<<20) // far more than the socket buffers
}

// exchange moves size random bytes (more than the socket buffers hold)
// each way between c and its peer.
func exchange(t *testing.T, c, peer net.Conn, size int) {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(data))))
		got <- b
	}()
	if n, err := c.Write(data); err != nil || n != len(data) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatal("the peer read other bytes than were written")
	}
	go func() { _, _ = peer.Write(data) }()
	back, err := io.ReadAll(io.LimitReader(c, int64(len(data))))
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes, %v", len(back), err)
	}
}

func TestFastConnHonoursDeadlinesAndReportsEOFAndClose(t *testing.T) {
	fc, peer := tcpPair(t)
	_ = fc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var buf [8]byte
	_, err := fc.Read(buf[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("deadline error is not a net.Error timeout: %v", err)
	}
	_ = fc.SetReadDeadline(time.Time{})
	if _, err := peer.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if n, err := fc.Read(buf[:]); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read after the deadline was lifted: %q, %v", buf[:n], err)
	}
	peer.Close()
	if _, err := fc.Read(buf[:]); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}
	fc.Close()
	if _, err := fc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want net.ErrClosed", err)
	}
}
