package faultnet

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line with the same line until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	conns := make(chan net.Conn, 16)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func newRelay(t *testing.T, target string) *Relay {
	t.Helper()
	r, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// roundTrip writes a line through c and reads it back within d.
func roundTrip(c net.Conn, rd *bufio.Reader, line string, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := rd.ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return errors.New("echo mismatch: " + got)
	}
	return nil
}

func dial(t *testing.T, r *Relay) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestARelayForwardsBothWays(t *testing.T) {
	r := newRelay(t, echoServer(t))
	c, rd := dial(t, r)
	for _, line := range []string{"one", "two", string(make([]byte, 100<<10))} {
		if err := roundTrip(c, rd, line, 5*time.Second); err != nil {
			t.Fatalf("%.10q: %v", line, err)
		}
	}
}

func TestPauseHoldsDataWithoutClosingAndResumeDeliversIt(t *testing.T) {
	r := newRelay(t, echoServer(t))
	c, rd := dial(t, r)
	if err := roundTrip(c, rd, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r.Pause()
	err := roundTrip(c, rd, "held", 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a paused relay answered: %v", err)
	}
	// A new connection is accepted but not answered either.
	c2, rd2 := dial(t, r)
	if err := roundTrip(c2, rd2, "new", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a new connection through a paused relay: %v", err)
	}
	r.Resume()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := rd.ReadString('\n'); err != nil || got != "held\n" {
		t.Fatalf("after Resume: %q, %v", got, err)
	}
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := rd2.ReadString('\n'); err != nil || got != "new\n" {
		t.Fatalf("new connection after Resume: %q, %v", got, err)
	}
}

func TestSetDelayDelaysEveryChunk(t *testing.T) {
	r := newRelay(t, echoServer(t))
	c, rd := dial(t, r)
	if err := roundTrip(c, rd, "warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r.SetDelay(100 * time.Millisecond)
	start := time.Now()
	if err := roundTrip(c, rd, "slow", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("round trip took %s, want at least two delays", d)
	}
	r.SetDelay(0)
	start = time.Now()
	if err := roundTrip(c, rd, "fast", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 90*time.Millisecond {
		t.Errorf("round trip took %s without a delay", d)
	}
}

func TestResetEndsConnectionsWithAResetAndNewOnesWork(t *testing.T) {
	r := newRelay(t, echoServer(t))
	c, rd := dial(t, r)
	if err := roundTrip(c, rd, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r.Reset()
	err := roundTrip(c, rd, "y", 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("after Reset: %v, want a reset connection", err)
	}
	c2, rd2 := dial(t, r)
	if err := roundTrip(c2, rd2, "z", 5*time.Second); err != nil {
		t.Fatalf("a new connection after Reset: %v", err)
	}
}

func TestCloseEndsEveryConnectionEvenWhilePaused(t *testing.T) {
	r, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, rd := dial(t, r)
	if err := roundTrip(c, rd, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r.Pause()
	_, _ = io.WriteString(c, "held\n")
	c2, _ := dial(t, r)
	_ = c2
	for deadline := time.Now().Add(5 * time.Second); r.Conns() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the relay did not take both connections")
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := rd.ReadString('\n'); err == nil {
		t.Fatal("a connection survived Close")
	}
	if _, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		t.Fatal("the relay still accepts after Close")
	}
}
