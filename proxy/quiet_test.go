package proxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/brownie/brownie-sidecar/internal/netx"
	"github.com/brownie/brownie-sidecar/internal/wire"
)

func TestQuietDue(t *testing.T) {
	for _, c := range []struct {
		mark, epoch uint64
		due         bool
	}{
		{0, 9, false},           // no wait
		{8, 9, false},           // began in the last period: may not have lasted one
		{7, 9, true},            // a whole period (epoch 8 to 9) has passed
		{1, 9, true},            //
		{waitChecked, 9, false}, // looked at: later bytes wake it
		{waitSuspect, 9, true},  // held bytes at the last look
		{waitKicked, 9, false},  // being ended
	} {
		if got := quietDue(c.mark, c.epoch); got != c.due {
			t.Errorf("quietDue(%d, %d) = %v, want %v", c.mark, c.epoch, got, c.due)
		}
	}
}

// tcpPairFast is a loopback TCP connection, the sidecar's end wrapped as
// upstream connections are (netx.WrapFast), and the server's end.
func tcpPairFast(t *testing.T) (fast, raw, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fast = netx.WrapFast(raw)
	t.Cleanup(func() { fast.Close(); server.Close() })
	return fast, raw, server
}

// awaitQuietAsync runs ss.awaitQuiet(u, seq) and returns a channel closed
// when it returns.
func awaitQuietAsync(ss *session, u *upstream, seq uint64) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ss.awaitQuiet(u, seq)
	}()
	return done
}

// waitFor polls cond (bounded) until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// strandedUpstream is an upstream whose reads come from a pipe, which
// delivers nothing until the test writes to its other end (returned),
// while the sweep peeks at a TCP socket already holding a byte (its
// sidecar end, fast, is returned too): a quiet wait on it does not see
// what the socket holds, deterministically.
func strandedUpstream(t *testing.T) (u *upstream, fast, pipeServer net.Conn) {
	t.Helper()
	fast, raw, server := tcpPairFast(t)
	pipeSide, pipeServer := net.Pipe()
	t.Cleanup(func() { pipeSide.Close(); pipeServer.Close() })
	if _, err := server.Write([]byte{'N'}); err != nil {
		t.Fatal(err)
	}
	return &upstream{conn: pipeSide, raw: raw, qr: fast.(netx.QuietReader), r: wire.NewReader(pipeSide, 4<<10)}, fast, pipeServer
}

// wantRescued fails the test unless srv counted n rescued quiet waits.
func wantRescued(t *testing.T, srv *Server, n float64) {
	t.Helper()
	if got := testutil.ToFloat64(srv.metrics.QuietWaitsRescued); got != n {
		t.Fatalf("brownie_sidecar_quiet_waits_rescued_total = %v, want %v", got, n)
	}
}

// awaitClosed fails the test unless done is closed within 10 s.
func awaitClosed(t *testing.T, done chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal(what)
	}
}

// A quiet wait that misses bytes which came before it began is ended by
// the idle sweep, which finds them in the socket, and the relay reads on
// with the read deadline the session had set (strandedUpstream).
func TestTheIdleSweepEndsAQuietWaitThatMissedBytesAndTheDeadlineIsRestored(t *testing.T) {
	for _, setDeadline := range []bool{false, true} {
		srv, ss, _ := idleSession(t, 20*time.Millisecond)
		runSweep(t, srv)
		u, _, pipeServer := strandedUpstream(t)
		var grace time.Time
		if setDeadline { // a failed write bounds the read for the server's last words
			grace = time.Now().Add(time.Second)
			ss.setUpstreamDeadline(u, grace)
		}

		start := time.Now()
		awaitClosed(t, awaitQuietAsync(ss, u, 1), "the idle sweep did not end the quiet wait")
		if ss.quietMark.Load() != 0 || ss.quietUp.Load() != nil {
			t.Fatalf("after the wait: mark %d, upstream %p", ss.quietMark.Load(), ss.quietUp.Load())
		}
		wantRescued(t, srv, 1)
		if !setDeadline {
			// No deadline left: a read well after the kick gets its bytes.
			go func() {
				time.Sleep(50 * time.Millisecond)
				_, _ = pipeServer.Write([]byte{'Z'})
			}()
			if err := u.r.Wait(); err != nil || u.r.Buffered() != 1 {
				t.Fatalf("the read after the kicked wait: %d bytes, %v", u.r.Buffered(), err)
			}
			continue
		}
		// The session's own deadline is back: the read fails at it, not
		// at once and not never.
		errc := make(chan error, 1)
		go func() { errc <- u.r.Wait() }()
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the read after the kicked wait: %v, want the session's deadline", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the read after the kicked wait has no deadline: the session's was lost")
		}
		if now := time.Now(); now.Before(grace) {
			t.Fatalf("the read failed %s before the session's deadline (the wait took %s)", grace.Sub(now), now.Sub(start))
		}
	}
}

// A quiet wait whose socket the sweep finds empty is left waiting, with
// no deadline, and sees what the server sends afterwards; the sweep looks
// at it once.
func TestAQuietWaitOnAnEmptySocketIsLookedAtOnceAndSeesLaterBytes(t *testing.T) {
	srv, ss, _ := idleSession(t, 20*time.Millisecond)
	runSweep(t, srv)
	fast, raw, server := tcpPairFast(t)
	u := &upstream{conn: fast, raw: raw, qr: fast.(netx.QuietReader), r: wire.NewReader(fast, 4<<10)}

	done := awaitQuietAsync(ss, u, 1)
	waitFor(t, "the sweep has looked at the wait", func() bool { return ss.quietMark.Load() == waitChecked })
	select {
	case <-done:
		t.Fatal("the quiet wait ended with nothing to read")
	case <-time.After(100 * time.Millisecond): // five sweeps: none ends it
	}
	if ss.quietMark.Load() != waitChecked {
		t.Fatalf("mark %d after more sweeps, want waitChecked", ss.quietMark.Load())
	}
	if _, err := server.Write([]byte{'A'}); err != nil {
		t.Fatal(err)
	}
	awaitClosed(t, done, "the quiet wait did not see the server's bytes")
	if err := u.r.Wait(); err != nil || u.r.Buffered() != 1 || ss.quietMark.Load() != 0 {
		t.Fatalf("after the wait: %d bytes, %v, mark %d", u.r.Buffered(), err, ss.quietMark.Load())
	}
	wantRescued(t, srv, 0)
}

// Bytes in the socket of a quiet wait at one look of the sweep, gone by
// the next (the wait's goroutine read them), are not taken for bytes the
// wait missed: the wait is not ended and nothing is counted. The test
// empties the peeked socket itself between the two looks
// (strandedUpstream).
func TestBytesReadBeforeTheSweepsSecondLookAreNotTakenForMissedOnes(t *testing.T) {
	srv, ss, _ := idleSession(t, 20*time.Millisecond)
	runSweep(t, srv)
	u, fast, pipeServer := strandedUpstream(t)

	done := awaitQuietAsync(ss, u, 1)
	waitFor(t, "the sweep has seen the byte once", func() bool { return ss.quietMark.Load() == waitSuspect })
	_ = fast.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := fast.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sweep has looked again", func() bool { return ss.quietMark.Load() == waitChecked })
	select {
	case <-done:
		t.Fatal("the wait was ended although its socket was empty at the second look")
	default:
	}
	wantRescued(t, srv, 0)
	if _, err := pipeServer.Write([]byte{'Z'}); err != nil {
		t.Fatal(err)
	}
	awaitClosed(t, done, "the wait did not see the server's bytes")
}
