package netx

import "sync/atomic"

// Skipping the read that would find nothing after a quiet answer.
//
// A relay that has just relayed the whole answer to everything written
// upstream knows the server will send nothing more until the next
// request, yet its next read is tried once before it waits: the runtime's
// poller forgets readiness seen before a read begins, so a read that
// waits first could miss bytes that came in between. That try finds
// nothing, one system call per round trip.
//
// The try may be skipped when nothing can have come in since the last
// read: that read returned less than it asked for (it left the socket
// empty), everything written before it was answered by what it and the
// reads before it returned (the caller knows that from the protocol), and
// no write has begun since. The check runs inside the read, after the
// poller has forgotten earlier readiness, so a write that begins after it
// is answered after the wait has begun, and the wait sees the answer.
// What the server sends unasked (a notification, a shutdown's error) in
// the moment between the last read and the check is not seen by the wait:
// the caller must look for it (a peek) when a skipped wait lasts.

// QuietReader is implemented by the connections WrapFast returns.
type QuietReader interface {
	// WriteSeq returns how many writes have begun on the connection. Safe
	// for concurrent use.
	WriteSeq() uint64
	// SkipIdleRead makes the next Read wait for the connection to be
	// readable before its first read system call, when the last read
	// left the socket empty and WriteSeq is still seq. The caller vouches
	// that what was read so far answers everything written up to the
	// write that made WriteSeq seq, and looks itself for what the peer
	// may send unasked (see above). Otherwise that Read reads first, as
	// ever. Reader goroutine only; the next Read consumes it.
	SkipIdleRead(seq uint64)
}

// WriteSeq: see QuietReader.
func (c *fastConn) WriteSeq() uint64 { return c.wseq.Load() }

// SkipIdleRead: see QuietReader.
func (c *fastConn) SkipIdleRead(seq uint64) {
	if c.drained {
		c.rd.skip, c.rd.seq = true, seq
	}
}

// writeSeq counts the writes begun on a connection.
type writeSeq = atomic.Uint64
