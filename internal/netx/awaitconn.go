package netx

import "os"

// Writing a request inside the wait for its answer.
//
// A proxy that writes a request and then reads its answer makes a read
// that finds nothing: the read is tried once before it waits, and the
// answer cannot have arrived yet. The runtime's poller forgets readiness
// seen before a read begins, so a reader may only skip that first try if
// the request is written after its wait has begun: the answer's arrival
// is then seen by the wait. AwaitAnswer does that: the request's bytes,
// held back by HoldWrites, are written from inside the read's first
// attempt, which then waits instead of reading. One read system call per
// round trip fewer, and the same number of goroutine wake-ups.

// Awaiter is implemented by the connections WrapFast returns. Its methods
// belong to the connection's one reader-and-writer: they may only be used
// while no other goroutine reads or writes the connection.
type Awaiter interface {
	// HoldWrites makes the following Writes keep their bytes (a copy)
	// instead of writing them, until AwaitAnswer, SendHeld or a Read
	// sends them.
	HoldWrites()
	// Holding reports whether HoldWrites is in effect.
	Holding() bool
	// SendHeld writes the held bytes and ends holding.
	SendHeld() error
	// AwaitAnswer ends holding, writes the held bytes and waits until the
	// connection is readable (or its read deadline passes, or it is
	// closed: the next Read reports that), without reading. It returns
	// the write's error, after which it does not wait. Without held
	// bytes it ends holding and returns at once: the next Read waits as
	// ever.
	AwaitAnswer() error
}

func (c *fastConn) HoldWrites()   { c.holding = true }
func (c *fastConn) Holding() bool { return c.holding }

func (c *fastConn) SendHeld() error {
	c.holding = false
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Write(c.held)
	c.held = c.held[:0]
	return err
}

func (c *fastConn) AwaitAnswer() error {
	c.holding = false
	if len(c.held) == 0 {
		return nil
	}
	c.await = awaitOp{w: rawOp{p: c.held}}
	c.wseq.Add(1)
	_ = c.rc.Read(c.awaitFn) // a deadline or a close: the next Read reports it
	o := &c.await.w
	var werr error
	switch {
	case o.errno != 0:
		werr = c.opError("write", os.NewSyscallError("write", o.errno))
	case o.n < len(o.p):
		// The wait ended before it began (a past deadline, a closed conn:
		// nothing written), or the socket buffer was full: the rest waits
		// for room.
		_, werr = c.Write(o.p[o.n:])
	}
	c.held, c.await = c.held[:0], awaitOp{}
	return werr
}

// awaitOp is AwaitAnswer's write of the held bytes, made from inside a
// read's first attempt with raw calls (the read holds the descriptor).
type awaitOp struct {
	w     rawOp
	begun bool
}

// run is the read callback: first the write, then report readiness.
func (o *awaitOp) run(fd uintptr) bool {
	if o.begun {
		return true // woken: readable
	}
	o.begun = true
	if !o.w.write(fd) {
		return true // the socket buffer is full: the caller writes the rest, waiting for room
	}
	return o.w.errno != 0 // written: wait for the answer; failed: do not
}
