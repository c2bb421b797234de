package proxy

import (
	"errors"
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

// idleRelease is the session's delay before going dormant.
func (ss *session) idleRelease() time.Duration {
	if d := ss.srv.cfg.Listen.IdleRelease; d > 0 {
		return d
	}
	return defaultIdleRelease
}

// awaitClient waits for the client's next message when none is buffered,
// with a read deadline of idleRelease on the wait. When the deadline passes
// with nothing read, the session goes dormant (goDormant) and awaitClient
// returns errDormant; in the goroutine that continues the session, Next
// reads the header with no buffer and no deadline.
//
// The deadline covers only this wait: wire.Reader.Wait consumes nothing
// when it fails, so a deadline can never cut a message, and its error
// never reaches the client. The wait's first read is the one Next would
// have made (it fills the buffer Next then reads), so a busy session makes
// no extra system call; arming and clearing the deadline is a runtime
// timer update, about 0.3 µs per wait on the development machine
// (BenchmarkReadDeadlineArming in internal/wire), well under 1 % of a
// transaction's CPU. Session goroutine only.
func (ss *session) awaitClient() error {
	if ss.cr.Buffered() > 0 || ss.cr.Released() {
		return nil
	}
	_ = ss.client.SetReadDeadline(time.Now().Add(ss.idleRelease()))
	err := ss.cr.Wait()
	_ = ss.client.SetReadDeadline(time.Time{})
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if !ss.goDormant() {
		return nil
	}
	return errDormant
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
// is parked with no goroutine, so that it ends and cleans up. The caller
// has set ss.ended, which keeps the session from being parked afterwards.
func (ss *session) closeClient() {
	ss.srv.dormancy.unpark(ss)
	_ = ss.client.Close()
}

// parkable reports whether the session may be parked: it has not been
// ended (see closeClient).
func (ss *session) parkable() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return !ss.ended
}
