package netx

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// readN reads n bytes from c within a second, or fails the test.
func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return string(b)
}

// TestAwaitAnswerWritesTheHeldRequestThenWaitsForItsAnswer: held writes
// reach the peer only at AwaitAnswer, which returns once the peer has
// answered, and the answer is the next Read's.
func TestAwaitAnswerWritesTheHeldRequestThenWaitsForItsAnswer(t *testing.T) {
	fc, peer := tcpPair(t)
	aw := fc.(Awaiter)
	aw.HoldWrites()
	for _, p := range []string{"req", "uest"} { // TLS writes a request in records
		if n, err := fc.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("held Write = %d, %v", n, err)
		}
	}
	_ = peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := peer.Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the peer read %d bytes (%v) before AwaitAnswer", n, err)
	}
	got := make(chan string, 1)
	go func() { // the peer: reads the request, answers it
		_ = peer.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 7)
		n, _ := io.ReadFull(peer, b)
		got <- string(b[:n])
		_, _ = peer.Write([]byte("answer"))
	}()
	if err := aw.AwaitAnswer(); err != nil {
		t.Fatalf("AwaitAnswer: %v", err)
	}
	if aw.Holding() {
		t.Fatal("still holding after AwaitAnswer")
	}
	if req := <-got; req != "request" {
		t.Fatalf("the peer got %q, want %q", req, "request")
	}
	if got := readN(t, fc, 6); got != "answer" {
		t.Fatalf("read %q after AwaitAnswer, want %q", got, "answer")
	}
}

// TestAwaitAnswerWaitsForTheAnswer: AwaitAnswer does not return before the
// peer writes.
func TestAwaitAnswerWaitsForTheAnswer(t *testing.T) {
	fc, peer := tcpPair(t)
	aw := fc.(Awaiter)
	aw.HoldWrites()
	_, _ = fc.Write([]byte("q"))
	done := make(chan error, 1)
	go func() { done <- aw.AwaitAnswer() }()
	readN(t, peer, 1)
	select {
	case err := <-done:
		t.Fatalf("AwaitAnswer returned (%v) before any answer", err)
	case <-time.After(100 * time.Millisecond):
	}
	_, _ = peer.Write([]byte("a"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("AwaitAnswer still waits after the answer")
	}
}

// TestHeldBytesGoOutBeforeAnyRead: a Read, SendHeld, or an AwaitAnswer
// whose wait cannot begin (a past deadline) still sends what is held, in
// order with later writes.
func TestHeldBytesGoOutBeforeAnyRead(t *testing.T) {
	fc, peer := tcpPair(t)
	aw := fc.(Awaiter)

	aw.HoldWrites()
	_, _ = fc.Write([]byte("one"))
	_, _ = peer.Write([]byte("x"))
	if got := readN(t, fc, 1); got != "x" {
		t.Fatalf("read %q", got)
	}
	if got := readN(t, peer, 3); got != "one" {
		t.Fatalf("the peer got %q, want the bytes held before the Read", got)
	}

	aw.HoldWrites()
	_, _ = fc.Write([]byte("two"))
	if err := aw.SendHeld(); err != nil {
		t.Fatal(err)
	}
	_, _ = fc.Write([]byte("three"))
	if got := readN(t, peer, 8); got != "twothree" {
		t.Fatalf("the peer got %q", got)
	}

	aw.HoldWrites()
	_, _ = fc.Write([]byte("four"))
	_ = fc.SetReadDeadline(time.Now().Add(-time.Second))
	if err := aw.AwaitAnswer(); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, peer, 4); got != "four" {
		t.Fatalf("the peer got %q", got)
	}
}

// TestAwaitAnswerReportsTheWriteError: a request that cannot be written
// fails AwaitAnswer at once instead of waiting for an answer.
func TestAwaitAnswerReportsTheWriteError(t *testing.T) {
	fc, peer := tcpPair(t)
	aw := fc.(Awaiter)
	_ = peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // a reset, delivered within the close on loopback: writes fail
	aw.HoldWrites()
	_, _ = fc.Write([]byte("q"))
	done := make(chan error, 1)
	go func() { done <- aw.AwaitAnswer() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("AwaitAnswer wrote to a reset connection")
		}
	case <-time.After(time.Second):
		t.Fatal("AwaitAnswer waits on a reset connection")
	}
}
