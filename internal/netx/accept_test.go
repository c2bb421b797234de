package netx

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fastListen listens on network ("tcp" or "unix") as a FastListener.
func fastListen(t *testing.T, network string) *FastListener {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	fl, ok := ListenFast(ln).(*FastListener)
	if !ok {
		ln.Close()
		t.Fatalf("ListenFast(%T) did not wrap", ln)
	}
	t.Cleanup(func() { fl.Close() })
	return fl
}

// acceptPair dials fl and returns the accepted conn and the dialled one.
func acceptPair(t *testing.T, fl *FastListener) (net.Conn, net.Conn) {
	t.Helper()
	peer, err := net.Dial(fl.Addr().Network(), fl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := fl.Accept()
	if err != nil {
		peer.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

func TestFastListenerAcceptsTCPWithNoDelayAndTheAddressesNetReports(t *testing.T) {
	fl := fastListen(t, "tcp")
	c, peer := acceptPair(t, fl)
	if _, ok := c.(*fastConn); !ok {
		t.Fatalf("accepted a %T, want a fastConn", c)
	}
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || ra.String() != peer.LocalAddr().String() {
		t.Fatalf("RemoteAddr = %#v, want the dialler's %v", c.RemoteAddr(), peer.LocalAddr())
	}
	if c.LocalAddr().String() != fl.Addr().String() {
		t.Fatalf("LocalAddr = %v, want %v", c.LocalAddr(), fl.Addr())
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nodelay int
	var optErr error
	if err := rc.Control(func(fd uintptr) {
		nodelay, optErr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
	}); err != nil || optErr != nil {
		t.Fatal(err, optErr)
	}
	if nodelay == 0 {
		t.Fatal("TCP_NODELAY is off on the accepted socket")
	}
	exchange(t, c, peer, 4<<20)
}

func TestFastListenerAcceptsUnixSocketsAsLocalPeers(t *testing.T) {
	fl := fastListen(t, "unix")
	c, peer := acceptPair(t, fl)
	if _, ok := c.RemoteAddr().(*net.UnixAddr); !ok {
		t.Fatalf("RemoteAddr = %#v, want a *net.UnixAddr", c.RemoteAddr())
	}
	if c.LocalAddr().String() != fl.Addr().String() {
		t.Fatalf("LocalAddr = %v, want %v", c.LocalAddr(), fl.Addr())
	}
	exchange(t, c, peer, 4<<20)
}

func TestFastListenerCloseEndsABlockedAccept(t *testing.T) {
	fl := fastListen(t, "tcp")
	errc := make(chan error, 1)
	go func() {
		c, err := fl.Accept()
		if err == nil {
			c.Close()
		}
		errc <- err
	}()
	// Accept may not be blocked yet when Close runs; either way it must
	// end with net.ErrClosed.
	if err := fl.Close(); err != nil {
		t.Fatal(err)
	}
	expectErrClosed(t, errc, "Accept")
	if _, err := net.Dial("tcp", fl.Addr().String()); err == nil {
		t.Fatal("the closed listener still accepts connections")
	}
}

func TestCloseReleasesTheSocketAtOnceAndFailsLaterCalls(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			fl := fastListen(t, network)
			c, peer := acceptPair(t, fl)
			// What was written before Close still reaches the peer, then EOF.
			data := make([]byte, 1<<20)
			_, _ = rand.Read(data)
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(peer)
				got <- b
			}()
			// A read blocked in another goroutine ends with net.ErrClosed.
			readErr := make(chan error, 1)
			if n, err := c.Write(data); err != nil || n != len(data) {
				t.Fatalf("Write = %d, %v", n, err)
			}
			go func() {
				_, err := c.Read(make([]byte, 1))
				readErr <- err
			}()
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case b := <-got:
				if !bytes.Equal(b, data) {
					t.Fatalf("the peer read %d bytes before EOF, want the %d written", len(b), len(data))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the peer saw no EOF 10 s after Close")
			}
			expectErrClosed(t, readErr, "a blocked Read")
			if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
			}
			if err := c.SetReadDeadline(time.Now().Add(time.Hour)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("SetReadDeadline after Close: %v, want net.ErrClosed", err)
			}
			if _, err := c.(syscall.Conn).SyscallConn(); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("SyscallConn after Close: %v, want net.ErrClosed", err)
			}
			if err := c.Close(); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("second Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

func TestClosedSocketsPlaceholdersAreClosedInBatches(t *testing.T) {
	fl := fastListen(t, "tcp")
	before := openFDs(t)
	const n = 50
	for range n {
		peer, err := net.Dial("tcp", fl.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := fl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		peer.Close()
	}
	// Every accepted descriptor is closed within closeBatchDelay of its
	// Close; wait well beyond it before calling it a leak.
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := openFDs(t)
		if now <= before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open 5 s after closing %d connections, %d before", now, n, before)
		}
		time.Sleep(closeBatchDelay)
	}
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// expectErrClosed waits up to 10 s for the error of a call (what) that was
// blocked when Close ran, and fails unless it is net.ErrClosed.
func expectErrClosed(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("%s after Close: %v, want net.ErrClosed", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked 10 s after Close", what)
	}
}
