package wire_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/wire"
)

func TestReleaseGivesTheBufferBackOnlyBetweenMessages(t *testing.T) {
	data := stream(msg('Q', "abc"), msg('S', ""), msg('Q', "0123456789"))
	src := &scriptedReader{steps: []any{data[:len(data)-10], errTransient, data[len(data)-10:]}}
	r := wire.NewReader(src, 16)
	mustNext(t, r, 'Q', 3)
	if r.Release() {
		t.Fatal("Release succeeded with a body unread")
	}
	mustBody(t, r, "abc")
	if r.Release() {
		t.Fatal("Release succeeded with the next message buffered")
	}
	mustNext(t, r, 'S', 0)
	mustNext(t, r, 'Q', 10)
	if _, err := r.Body(); !errors.Is(err, errTransient) {
		t.Fatalf("Body: %v, want %v", err, errTransient)
	}
	if r.Release() {
		t.Fatal("Release succeeded in the middle of a body")
	}
	mustBody(t, r, "0123456789")
	if !r.Release() || !r.Released() || r.Buffered() != 0 {
		t.Fatal("Release failed between messages with nothing buffered")
	}
	if !r.Release() {
		t.Fatal("a second Release reported a buffer held")
	}
	if typ, _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next at the end of the stream = (%q, %v), want io.EOF", typ, err)
	}
}

// TestReleasedReaderReadsAHeaderSplitAcrossReads feeds the first message
// after a release one byte pair at a time with transient errors between:
// the header is read without a buffer, resumes where each error stopped it,
// and the body and the message after it come through a new buffer.
func TestReleasedReaderReadsAHeaderSplitAcrossReads(t *testing.T) {
	first, second := msg('Q', "select 1\x00"), msg('X', "")
	src := &scriptedReader{steps: []any{errTransient, first[:1], errTransient, first[1:3], errTransient,
		first[3:7], append(bytes.Clone(first[7:]), second...)}}
	r := wire.NewReader(src, 16)
	if !r.Release() {
		t.Fatal("Release failed on a new Reader")
	}
	if err := r.Wait(); !errors.Is(err, errTransient) {
		t.Fatalf("Wait: %v, want %v", err, errTransient)
	}
	if err := r.Wait(); err != nil { // reads the type byte, without a buffer
		t.Fatalf("Wait: %v", err)
	}
	if !r.Released() {
		t.Fatal("Wait took a buffer on a released Reader")
	}
	for i := 0; ; i++ {
		typ, n, err := r.Next()
		if errors.Is(err, errTransient) && i < 5 {
			continue
		}
		if err != nil || typ != 'Q' || n != len(first)-5 {
			t.Fatalf("Next = (%q, %d, %v), want ('Q', %d, nil)", typ, n, err, len(first)-5)
		}
		break
	}
	mustBody(t, r, "select 1\x00")
	mustNext(t, r, 'X', 0)
}

func TestNextResumesAfterATransientErrorInsideAHeader(t *testing.T) {
	first, second := msg('Q', "x\x00"), msg('S', "")
	src := &scriptedReader{steps: []any{first[:2], errTransient, append(bytes.Clone(first[2:]), second...)}}
	r := wire.NewReader(src, 16)
	if _, _, err := r.Next(); !errors.Is(err, errTransient) {
		t.Fatalf("Next: %v, want %v", err, errTransient)
	}
	mustNext(t, r, 'Q', 2)
	mustBody(t, r, "x\x00")
	mustNext(t, r, 'S', 0)
}

func TestReleasedReaderReportsATruncatedHeader(t *testing.T) {
	r := wire.NewReader(bytes.NewReader([]byte{'Q', 0}), 16)
	r.Release()
	if _, _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("Next: %v, want io.ErrUnexpectedEOF", err)
	}
}

// TestWaitOnADeadlineLosesNoByte idles a Reader over a real connection to
// its read deadline, releases it and lets the next message arrive in two
// writes around the moment the wait starts again: the deadline surfaces only
// from Wait, and Next reads the message whole.
func TestWaitOnADeadlineLosesNoByte(t *testing.T) {
	for _, release := range []bool{false, true} {
		c, p := net.Pipe()
		r := wire.NewReader(c, 16)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if err := r.Wait(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Wait: %v, want a deadline error", err)
		}
		_ = c.SetReadDeadline(time.Time{})
		if release && !r.Release() {
			t.Fatal("Release failed after an idle wait")
		}
		m := msg('Q', "select 1\x00")
		written := make(chan error, 1)
		go func() {
			if _, err := p.Write(m[:3]); err != nil {
				written <- err
				return
			}
			_, err := p.Write(m[3:])
			written <- err
		}()
		if err := r.Wait(); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		mustNext(t, r, 'Q', len(m)-5)
		mustBody(t, r, "select 1\x00")
		if err := <-written; err != nil {
			t.Fatal(err)
		}
		c.Close()
		p.Close()
	}
}

// BenchmarkReadDeadlineArming measures what arming and clearing a read
// deadline costs a session waiting for its client's next message: a
// runtime timer update on the poller descriptor, no system call.
func BenchmarkReadDeadlineArming(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		_ = s.SetReadDeadline(time.Now().Add(time.Second))
		_ = s.SetReadDeadline(time.Time{})
	}
}

func TestARecycledBufferServesTheNextReaderWithNothingOfTheLast(t *testing.T) {
	first := wire.NewReader(bytes.NewReader(stream(msg('Q', "old one"), msg('Q', "left buffered"))), wire.RecycledSize)
	mustNext(t, first, 'Q', 7)
	mustBody(t, first, "old one")
	if first.Buffered() == 0 {
		t.Fatal("the second message is not buffered: the test needs it to be")
	}
	first.Recycle() // with a message still buffered: nothing of it may leak
	first.Recycle() // idempotent
	if !first.Released() {
		t.Fatal("a recycled Reader still holds a buffer")
	}
	for range 3 { // whichever Reader takes the buffer, it reads only its own stream
		r := wire.NewReader(bytes.NewReader(stream(msg('S', ""), msg('Q', "new"))), wire.RecycledSize)
		mustNext(t, r, 'S', 0)
		mustNext(t, r, 'Q', 3)
		mustBody(t, r, "new")
		if _, _, err := r.Next(); !errors.Is(err, io.EOF) {
			t.Fatalf("after its stream: %v, want EOF", err)
		}
		r.Recycle()
	}
	other := wire.NewReader(bytes.NewReader(stream(msg('Q', "x"))), 16) // another size: not recycled, still works
	mustNext(t, other, 'Q', 1)
	other.Recycle()
}

func TestAReaderTakingARecycledBufferAllocatesNoBuffer(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled items at random")
	}
	src := bytes.NewReader(nil)
	wire.NewReader(src, wire.RecycledSize).Recycle()
	allocs := testing.AllocsPerRun(100, func() {
		wire.NewReader(src, wire.RecycledSize).Recycle()
	})
	if allocs > 1 { // the Reader itself
		t.Fatalf("%v allocations per Reader, want 1: the buffer was not reused", allocs)
	}
}
