package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/wire"
)

func TestReclaimerSchedulesOneCheckAtATimeAndNoneOnceStopped(t *testing.T) {
	var r reclaimer
	r.dormant()
	first := r.timer
	if first == nil {
		t.Fatal("a dormancy scheduled no check")
	}
	r.dormant()
	if r.timer != first {
		t.Fatal("a second dormancy scheduled a second check")
	}
	r.stop()
	r.stop()
	r.dormant()
	if r.timer != nil {
		t.Fatal("a dormancy after stop scheduled a check")
	}
}

// idleSession is a session waiting on one end of a loopback TCP
// connection, registered with a server whose CLIENT_IDLE_RELEASE is
// release; the other end is returned for the test to write to.
func idleSession(t *testing.T, release time.Duration) (*Server, *session, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	app, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	client, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	srv := &Server{metrics: metrics.New(prometheus.NewRegistry()), sessions: map[uint32]*session{}}
	srv.cfg.Listen.IdleRelease = release
	srv.idleEpoch.Store(1)
	t.Cleanup(srv.reclaim.stop)
	ss := &session{srv: srv, log: sessionLog{base: zap.NewNop()}, client: client, pid: minClientPID, cr: wire.NewReader(client, bufSize)}
	ss.cond = sync.NewCond(&ss.mu)
	srv.sessions[ss.pid] = ss
	return srv, ss, app
}

// runSweep runs srv's idle sweep until the test ends.
func runSweep(t *testing.T, srv *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.sweepIdle(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// awaitDormancy waits (bounded) for ss's wait for its client, which the
// running idle sweep must end, to end in dormancy.
func awaitDormancy(t *testing.T, ss *session) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- ss.awaitClient() }()
	select {
	case err := <-errc:
		if !errors.Is(err, errDormant) {
			t.Fatalf("the wait ended with %v, want errDormant", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle sweep did not end the wait")
	}
}

// A session waiting for its client goes dormant through the idle sweep,
// not before CLIENT_IDLE_RELEASE has passed, and reads its client's next
// message afterwards with no deadline left on the socket.
func TestAWaitForTheClientEndsInDormancyAfterTheIdleRelease(t *testing.T) {
	const release = 60 * time.Millisecond
	srv, ss, app := idleSession(t, release)
	runSweep(t, srv)

	start := time.Now()
	awaitDormancy(t, ss)
	if waited := time.Since(start); waited < release {
		t.Fatalf("the session went dormant after %s, before CLIENT_IDLE_RELEASE (%s)", waited, release)
	}
	if !ss.dormant || !ss.cr.Released() || ss.waitMark.Load() != 0 {
		t.Fatalf("after the wait: dormant %v, buffer released %v, mark %d", ss.dormant, ss.cr.Released(), ss.waitMark.Load())
	}

	// The next message comes well after the kick's deadline: the read
	// must not fail on it.
	go func() {
		time.Sleep(2 * release)
		_, _ = app.Write(wire.AppendQuery(nil, "SELECT 1"))
	}()
	typ, n, err := ss.cr.Next()
	if err != nil || typ != 'Q' {
		t.Fatalf("reading the message that wakes the session: %c, %v", typ, err)
	}
	if _, err := ss.cr.Body(); err != nil || n != len("SELECT 1")+1 {
		t.Fatalf("the message body: %d bytes, %v", n, err)
	}
}

// A kick that comes after the wait it was meant for has ended (the
// client's message arrived first) sets no deadline, and a kick that wins
// the race is cleared before the session reads on.
func TestAKickRacingTheClientsMessageLeavesNoDeadline(t *testing.T) {
	srv, ss, app := idleSession(t, time.Hour)
	if _, err := app.Write(wire.AppendQuery(nil, "SELECT 1")); err != nil {
		t.Fatal(err)
	}
	mark := srv.idleEpoch.Load()
	if err := ss.awaitClient(); err != nil {
		t.Fatalf("a wait with a message on its way: %v", err)
	}
	ss.kick(mark) // too late: the wait has ended
	if m := ss.waitMark.Load(); m != 0 {
		t.Fatalf("a late kick marked the session %d", m)
	}
	if _, _, err := ss.cr.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := ss.cr.Body(); err != nil {
		t.Fatal(err)
	}

	// The kick lands just after the wait's read returned the client's
	// message: the session clears the deadline and reads on.
	ss.waitMark.Store(mark) // as awaitClient records it
	ss.kick(mark)
	if m := ss.waitMark.Load(); m != waitKicked {
		t.Fatalf("a kick of a waiting session left mark %d", m)
	}
	if err := ss.endWait(mark, nil); err != nil || ss.waitMark.Load() != 0 || ss.dormant {
		t.Fatalf("ending a kicked wait whose read succeeded: %v, mark %d, dormant %v", err, ss.waitMark.Load(), ss.dormant)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, _ = app.Write(wire.AppendQuery(nil, "SELECT 2"))
	}()
	if typ, _, err := ss.cr.Next(); err != nil || typ != 'Q' {
		t.Fatalf("the message after a kicked wait: %c, %v", typ, err)
	}
}

// A CLIENT_IDLE_RELEASE shorter than the sweep's shortest period does not
// stop the sweep (a ticker of period 0 panics): sessions still go dormant,
// and the sweep keeps its period, so two ticks pass first.
func TestATinyIdleReleaseStillSweeps(t *testing.T) {
	srv, ss, _ := idleSession(t, time.Nanosecond)
	runSweep(t, srv)
	mark := srv.idleEpoch.Load()
	awaitDormancy(t, ss)
	if epoch := srv.idleEpoch.Load(); epoch < mark+2 {
		t.Fatalf("dormant at epoch %d, the wait began in %d: the sweep kicked it before its second tick", epoch, mark)
	}
}
