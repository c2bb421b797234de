package netx

import (
	"syscall"
	"testing"
	"time"
)

// badFD is a descriptor no read can succeed on: a read system call made
// on it fails with EBADF, so a read callback that returns without that
// error made none.
const badFD = ^uintptr(0)

// The skipped first try decides without a system call, only while no
// write has begun since the caller's sequence number, and only once: the
// try after the wait reads.
func TestASkippedReadMakesNoSystemCallUntilItHasWaited(t *testing.T) {
	var w writeSeq
	w.Store(7)
	buf := make([]byte, 8)

	o := rawOp{p: buf, skip: true, seq: 7, wseq: &w}
	if o.read(badFD) {
		t.Fatalf("the first try read (errno %v): want a wait with no system call", o.errno)
	}
	if !o.read(badFD) || o.errno != syscall.EBADF {
		t.Fatalf("the try after the wait: errno %v, want the read's EBADF", o.errno)
	}

	o = rawOp{p: buf, skip: true, seq: 7, wseq: &w}
	w.Add(1) // a write began after the caller's request
	if !o.read(badFD) || o.errno != syscall.EBADF {
		t.Fatalf("with a write since: errno %v, want the first try to read", o.errno)
	}
}

// SkipIdleRead arms the skip only after a read that left the socket
// empty (it returned less than it asked for), and a Read consumes it.
func TestSkipIdleReadArmsOnlyAfterAReadThatLeftTheSocketEmpty(t *testing.T) {
	c, peer := tcpPair(t)
	fc := c.(*fastConn)
	var qr QuietReader = fc

	if _, err := peer.Write([]byte("abcd")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, fc, 4); got != "abcd" { // asked for exactly what came: maybe more is there
		t.Fatalf("read %q", got)
	}
	qr.SkipIdleRead(qr.WriteSeq())
	if fc.rd.skip {
		t.Fatal("armed after a read that filled its buffer")
	}

	if _, err := peer.Write([]byte("ef")); err != nil {
		t.Fatal(err)
	}
	_ = fc.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := fc.Read(make([]byte, 16)); err != nil || n != 2 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	qr.SkipIdleRead(qr.WriteSeq())
	if !fc.rd.skip {
		t.Fatal("not armed after a read that left the socket empty")
	}
	// A write since the caller's sequence number: the Read reads first,
	// and so finds bytes that came before it began.
	if _, err := fc.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write([]byte("g")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, fc, 1); got != "g" {
		t.Fatalf("read %q", got)
	}
	if fc.rd.skip {
		t.Fatal("the skip outlived the Read that consumed it")
	}
}

// The contract a relay relies on: with the skip armed, the answer to a
// request written while the Read waits (or about to) is read, whichever
// of the write and the Read's first try comes first; so is what the peer
// sends unasked once the Read waits.
func TestASkippedReadSeesTheAnswerToALaterWrite(t *testing.T) {
	c, peer := tcpPair(t)
	fc := c.(*fastConn)
	go func() { // the peer answers each byte it reads with its upper case
		b := make([]byte, 1)
		for {
			if _, err := peer.Read(b); err != nil {
				return
			}
			if _, err := peer.Write([]byte{b[0] - 'a' + 'A'}); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 16)
	for i := range 200 {
		req := byte('a' + i%26)
		if _, err := fc.Write([]byte{req}); err != nil {
			t.Fatal(err)
		}
		_ = fc.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := fc.Read(buf); err != nil || n != 1 || buf[0] != req-'a'+'A' {
			t.Fatalf("round %d: Read = %q, %v", i, buf[:n], err)
		}
		// Quiet: everything written is answered and read, the socket is
		// empty. The next request goes out from another goroutine,
		// racing the Read's first try.
		fc.SkipIdleRead(fc.WriteSeq())
		next := byte('a' + (i+1)%26)
		done := make(chan error, 1)
		go func() { _, err := fc.Write([]byte{next}); done <- err }()
		_ = fc.SetReadDeadline(time.Now().Add(time.Second))
		n, err := fc.Read(buf)
		if werr := <-done; werr != nil {
			t.Fatal(werr)
		}
		if err != nil || n != 1 || buf[0] != next-'a'+'A' {
			t.Fatalf("round %d, the answer to a write racing the skipped read: %q, %v", i, buf[:n], err)
		}
	}
}
