package proxy

import (
	"context"
	"errors"
	"math"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// defaultIdleRelease is how long a session waits for its client's next
// message before it goes dormant, when the configuration sets no
// CLIENT_IDLE_RELEASE. A busy client's requests come far closer together,
// so only sessions idle for a while pay for it (one more read, of the
// 5-byte header, for the message that wakes them).
const defaultIdleRelease = time.Second

// errDormant ends clientToUpstream when the session has gone dormant: run
// hands the session to the server's dormancy (or to a fresh goroutine).
var errDormant = errors.New("session dormant")

// awaitClient waits for the client's next message when none is buffered.
// A wait that lasts past idleRelease ends in dormancy (goDormant), and
// awaitClient then returns errDormant; in the goroutine that continues
// the session, Next reads the header with no buffer and no deadline.
//
// The wait carries no timer of its own: it records the idle sweep's epoch
// it began in (waitMark), and the server's sweeper (sweepIdle) ends waits
// that began long enough ago by setting a past read deadline on the client
// (kick). So a wait costs two atomic operations, where arming and
// clearing a read deadline around each wait took a runtime timer update
// and a clock read (5 % of the sidecar's user CPU in transaction mode at
// 50 clients). wire.Reader.Wait consumes nothing when it fails, so a
// kick can never cut a message, and its error never reaches the client.
// The wait's first read is the one Next would have made (it fills the
// buffer Next then reads), so a busy session makes no extra system call.
// Session goroutine only.
func (ss *session) awaitClient() error {
	if ss.cr.Buffered() > 0 || ss.cr.Released() {
		return nil
	}
	mark := ss.srv.idleEpoch.Load()
	ss.waitMark.Store(mark)
	return ss.endWait(mark, ss.cr.Wait())
}

// endWait ends the wait for the client that began in epoch mark, whose
// read returned err: when the sweeper kicked it, it clears the deadline
// and, when the deadline failed the read, sends the session dormant.
// Session goroutine only.
func (ss *session) endWait(mark uint64, err error) error {
	if ss.waitMark.CompareAndSwap(mark, 0) {
		return err // not kicked: no deadline was set
	}
	// Kicked: the sweeper has set the deadline (it holds kickMu until it
	// has), and the session's next reads must not carry it.
	ss.kickMu.Lock()
	_ = ss.client.SetReadDeadline(time.Time{})
	ss.waitMark.Store(0)
	ss.kickMu.Unlock()
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err // the message came first
	}
	if !ss.goDormant() {
		return nil
	}
	return errDormant
}

// minSweepPeriod is the shortest period of the idle sweep.
const minSweepPeriod = 5 * time.Millisecond

// waitKicked is the waitMark of a wait the sweeper has ended.
const waitKicked = math.MaxUint64

// kick ends the session's wait for its client if it is still the one
// that began in epoch mark: it sets a past read deadline on the client,
// which fails the wait's read. Safe for concurrent use with awaitClient;
// a wait that ended meanwhile is left alone, and one that began in the
// same epoch has waited long enough too.
func (ss *session) kick(mark uint64) {
	ss.kickMu.Lock()
	if ss.waitMark.CompareAndSwap(mark, waitKicked) {
		_ = ss.client.SetReadDeadline(time.Unix(1, 0))
	}
	ss.kickMu.Unlock()
}

// sweepIdle runs the idle sweep until ctx ends. Every half of idleRelease
// it starts a new epoch, looks at the relay's waits after a quiet answer
// that have lasted a whole period (checkQuiet, quiet.go), and kicks the
// sessions whose wait for their client (or inline wait for an answer,
// inline.go) has lasted idleRelease: a
// wait that recorded epoch m began before epoch m+1 did, so it is due
// once idleRelease has passed since the sweep began epoch m+1. On time,
// that is the sweep that begins epoch m+3, so a session goes dormant after
// idling between idleRelease and one and a half times it; a late tick can
// only make it later, never earlier. The period is at least
// minSweepPeriod, so a tiny CLIENT_IDLE_RELEASE cannot make the sweep spin
// (sessions then go dormant at the second tick after their wait began).
func (s *Server) sweepIdle(ctx context.Context) {
	release := s.idleRelease()
	t := time.NewTicker(max(release/2, minSweepPeriod))
	defer t.Stop()
	// began holds when the sweep began each of the last len(began)
	// epochs, by epoch modulo its length; older epochs are long due.
	var began [8]time.Time
	type waiting struct {
		ss       *session
		mark     uint64
		upstream bool // an inline wait for an answer (inline.go)
		quiet    bool // the relay's wait after a quiet answer (quiet.go)
	}
	var due []waiting
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		epoch := s.idleEpoch.Add(1)
		began[epoch%uint64(len(began))] = now
		isDue := func(m uint64) bool {
			next := m + 1 // the wait began before this epoch did
			switch {
			case m == 0 || m == waitKicked || next > epoch:
				return false
			case epoch-next >= uint64(len(began)):
				return true
			}
			return now.Sub(began[next%uint64(len(began))]) >= release
		}
		s.mu.Lock()
		for _, ss := range s.sessions {
			if m := ss.waitMark.Load(); isDue(m) {
				due = append(due, waiting{ss, m, false, false})
			}
			if m := ss.upWaitMark.Load(); isDue(m) {
				due = append(due, waiting{ss, m, true, false})
			}
			if m := ss.quietMark.Load(); quietDue(m, epoch) {
				due = append(due, waiting{ss, m, false, true})
			}
		}
		s.mu.Unlock()
		for i, w := range due {
			switch {
			case w.quiet:
				w.ss.checkQuiet(w.mark)
			case w.upstream:
				w.ss.kickUpstream(w.mark)
			default:
				w.ss.kick(w.mark)
			}
			due[i] = waiting{}
		}
		due = due[:0]
	}
}

// idleRelease is how long a session waits for its client's next message
// before it goes dormant.
func (s *Server) idleRelease() time.Duration {
	if d := s.cfg.Listen.IdleRelease; d > 0 {
		return d
	}
	return defaultIdleRelease
}

// goDormant gives back what a long-idle session does not need while it
// waits: its read buffer and scratch buffer and, when it holds no upstream
// connection, its relay goroutine (startRelayLocked starts one again at the
// next attachment); run then ends its goroutine too (see run). It reports
// whether the session went dormant. Session goroutine only; wake ends the
// dormancy.
func (ss *session) goDormant() bool {
	if !ss.cr.Release() {
		return false
	}
	ss.wbuf, ss.hbuf = nil, nil
	ss.mu.Lock()
	if ss.up == nil && ss.relayJobs != nil && !ss.parking {
		close(ss.relayJobs) // the relay goroutine has let go of its last attachment, or is about to
		ss.relayJobs = nil
	}
	ss.mu.Unlock()
	ss.dormant = true
	ss.srv.metrics.ClientsDormant.Inc()
	ss.srv.reclaim.dormant()
	return true
}

// wake ends the session's dormancy, if any, when the client's next message
// (or the end of its connection) arrives. Session goroutine only.
func (ss *session) wake() {
	if ss.dormant {
		ss.dormant = false
		ss.srv.metrics.ClientsDormant.Dec()
	}
}

// reclaimDelay is how long after a session goes dormant the server looks
// whether the Go runtime has collected garbage since. When it has not
// for all of reclaimDelay (the sidecar is otherwise quiet), the server
// collects and returns the free memory to the system
// (debug.FreeOSMemory), so what dormant sessions let go of (read buffers,
// the stacks of the goroutines they left) leaves the RSS within seconds:
// otherwise it waits for the runtime's forced collection (every two
// minutes) and then for its scavenger, which returns free memory slowly
// and keeps as much as the last busy moment needed. When the runtime did
// collect, the server looks again reclaimDelay later, until the sidecar
// has been quiet that long. A busy sidecar collects on its own and never
// pays for it; a quiet one pays one collection, a few milliseconds, per
// reclaimDelay at most.
const reclaimDelay = 2 * time.Second

// reclaimer runs those collections for a Server. Safe for concurrent use.
type reclaimer struct {
	mu      sync.Mutex
	timer   *time.Timer // pending check; nil when none
	armed   time.Time   // when the pending check was scheduled
	stopped bool
}

// dormant records that a session went dormant: it schedules a check when
// none is pending.
func (r *reclaimer) dormant() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scheduleLocked()
}

func (r *reclaimer) scheduleLocked() {
	if r.timer == nil && !r.stopped {
		r.armed = time.Now()
		r.timer = time.AfterFunc(reclaimDelay, r.check)
	}
}

// check collects and returns free memory when the runtime has not
// collected since the check was scheduled; otherwise it looks again later.
func (r *reclaimer) check() {
	var st debug.GCStats
	debug.ReadGCStats(&st)
	r.mu.Lock()
	r.timer = nil
	quiet := st.LastGC.Before(r.armed)
	if !quiet {
		r.scheduleLocked()
	}
	r.mu.Unlock()
	if quiet {
		debug.FreeOSMemory()
	}
}

// stop cancels a pending check; later dormancies schedule none. Idempotent.
func (r *reclaimer) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// closeClient closes the client's connection from outside the session
// goroutine (terminate, a lost upstream), first waking the session if it
// is parked with no goroutine, or waiting for an answer inline, so that it
// ends and cleans up. The caller has set ss.ended, which keeps the session
// from being parked afterwards.
func (ss *session) closeClient() {
	ss.srv.dormancy.unpark(ss)
	_ = ss.client.Close()
	// A session goroutine reading an answer inline goes back to its
	// client at once, to find it closed (inline.go).
	if m := ss.upWaitMark.Load(); m != 0 && m != waitKicked {
		ss.kickUpstream(m)
	}
}

// parkable reports whether the session may be parked: it has not been
// ended (see closeClient).
func (ss *session) parkable() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return !ss.ended
}
