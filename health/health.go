package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

// AppName is the application_name Deps.Dial should give the checker's
// connections, so operators (and tests) can tell them from pooled ones in
// pg_stat_activity.
const AppName = "brownie-sidecar-health"

// healthQuery reads a host's role and WAL position in one round trip: the
// WAL insert position on a primary (which covers commits still in WAL
// buffers under synchronous_commit=off), the replayed one on a standby, plus
// what a standby has received and how old its last replayed transaction is.
const healthQuery = `SELECT pg_is_in_recovery(),
 CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END,
 pg_last_wal_receive_lsn(),
 EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())`

// lsnSamples is how many recent primary WAL positions a shard remembers
// for read-your-writes.
const lsnSamples = 64

// Config is what the checker needs from the sidecar configuration.
type Config struct {
	// Interval is the period of the checks (HEALTH_CHECK_INTERVAL);
	// Timeout bounds one check, connect and query (HEALTH_CHECK_TIMEOUT),
	// and every OnHost call. A host that has not answered a check for
	// Timeout is down (see checkDeadline).
	Interval time.Duration
	Timeout  time.Duration
	// BanTime is how long a replica that failed is left out of reads
	// (REPLICA_BAN_TIME).
	BanTime time.Duration
	// MaxLag and MaxLagBytes are the replay delay and WAL distance above
	// which a replica gets no reads (MAX_REPLICA_LAG,
	// MAX_REPLICA_LAG_BYTES).
	MaxLag      time.Duration
	MaxLagBytes int64
	// ReplicaSelection is round_robin or least_busy (REPLICA_SELECTION).
	ReplicaSelection string
}

// Conn is one authenticated upstream connection, idle when Dial returns
// it. The checker uses it from one goroutine at a time and owns it until
// it closes it; package proxy implements it.
type Conn interface {
	// Exec runs one simple-protocol query to completion, passing each
	// DataRow's text values to onRow (which may be nil; the values are
	// only valid during the call). It returns the first error the server
	// reported as a *pgerr.Error, or the I/O error that broke the
	// connection.
	Exec(sql string, onRow func([][]byte)) error
	// InTransaction reports whether the last ReadyForQuery left the
	// connection anywhere but idle: in a transaction block, or a failed
	// one.
	InTransaction() bool
	// SetDeadline bounds every read and write; the zero time removes the
	// bound.
	SetDeadline(t time.Time) error
	// Close ends the connection. Safe to call more than once.
	Close() error
}

// Deps are the checker's collaborators.
type Deps struct {
	// Router supplies the current shard map; each round checks the hosts
	// of the map current when it starts.
	Router *router.Router
	// Metrics receives the host metrics (up, role, lag, failovers).
	Metrics *metrics.Metrics
	Log     *zap.Logger
	// Dial opens a connection to t's host, with application_name AppName
	// and no client's settings, bounded by ctx. Called concurrently.
	Dial func(ctx context.Context, t router.Target) (Conn, error)
	// HostDown, when set, is called (outside the checker's locks, from
	// the check loop) with the address of a host that stopped answering,
	// once per outage, so connections kept idle for it can be dropped.
	HostDown func(addr string)
	// Answered, when set, returns when a pooled connection to the host
	// at addr last received the end of an answer (a ReadyForQuery), the
	// zero time when none has. Called concurrently, from the check loop.
	// A check that timed out while the host kept answering pooled
	// requests found it busy, not silent (see Checker.busy).
	Answered func(addr string) time.Time
}

// hostHealth is what the last check of one host found. Immutable once
// published in a healthView.
type hostHealth struct {
	Host       router.Host
	Shard      string
	Configured router.Role // its role in the shard map
	Checked    bool        // at least one check has finished
	Up         bool
	InRecovery bool
	LSN        uint64 // current WAL position (primary) or replayed position (standby)
	ReceiveLSN uint64
	// LagBytes and LagSeconds are a standby's distance behind its shard's
	// primary; 0 on a primary.
	LagBytes    uint64
	LagSeconds  float64
	BannedUntil time.Time
	LastError   string
	CheckedAt   time.Time
	took        time.Duration // how long the check ran
	budget      time.Duration // how long the check could run (see checkDeadline)
	// silent: the check failed for want of an answer within its budget
	// (a timeout), not because the host refused or reported an error.
	silent bool
	// Synchronous shards only: a primary's streaming standbys (walreceiver
	// application_name → sync_state), a standby's own application_name,
	// and why replication could not be read (brownie_sidecar
	// .replication_state() missing or refused).
	Standbys    map[string]string
	StandbyName string
	ReplError   string
	// SyncState is what the shard's primary last reported for this
	// standby (sync, async, potential, quorum; "" unknown).
	SyncState string
}

// lsnSample is a primary's WAL position read by a check sent at At: any
// transaction that committed before At is at or below LSN.
type lsnSample struct {
	At  time.Time
	LSN uint64
}

// shardHealth is one shard's state in a healthView.
type shardHealth struct {
	// Primary is the host taking writes: the map's primary, or the standby
	// promoted in its place.
	Primary router.Host
	// PrimaryOK is true when Primary answered its last check as a primary.
	PrimaryOK bool
	// Problem says why there is no primary when PrimaryOK is false;
	// DownSince is when the shard lost it.
	Problem     string
	DownSince   time.Time
	Synchronous bool
	Hosts       []*hostHealth
	// Samples are the primary's recent WAL positions, oldest first.
	Samples []lsnSample
	rr      *atomic.Uint64 // round-robin cursor, shared across views
}

// healthView is an immutable snapshot of every host's health, swapped whole
// after each round of checks.
type healthView struct {
	Shards map[string]*shardHealth
	// Round is the number of the round of checks it publishes.
	Round uint64
}

// Checker checks every host of the shard map periodically over its own
// connection, outside the pools, and publishes snapshots that routing
// reads without locks. Run owns the check connections. All methods are
// safe for concurrent use; before the first round ends, Primary returns
// the map's primary, PrimaryOK true, Replica nothing and Ready an error.
type Checker struct {
	cfg      Config
	router   *router.Router
	metrics  *metrics.Metrics
	dial     func(context.Context, router.Target) (Conn, error)
	hostDown func(addr string)
	answered func(addr string) time.Time
	log      *zap.Logger
	view     atomic.Pointer[healthView]
	started  atomic.Uint64 // rounds of checks started
	kick     chan struct{} // Recheck: start a round now

	mu    sync.Mutex
	conns map[string]Conn // check connection per host address
	// lent holds, per host address whose kept connection a caller has,
	// a channel closed when it gives the connection back (or closes it).
	lent map[string]chan struct{}
	// lentWait, when set (tests), is called when a check starts waiting
	// for its connection to come back.
	lentWait func()
	closed   bool                      // Run ended: connections are closed, not kept
	banned   map[string]time.Time      // replica address → end of its ban
	prev     map[string]*hostHealth    // last result per address
	chosen   map[string]router.Host    // shard → current primary
	rr       map[string]*atomic.Uint64 // shard → round-robin cursor
	lsns     map[string][]lsnSample    // shard → primary samples
	rounds   chan struct{}             // replaced at each publication, closed after its HostDown calls
	// Failover state, per shard unless said otherwise.
	waiting   map[string]int       // callers in WaitPrimary
	downSince map[string]time.Time // shards without a primary, since
	names     map[string]string    // standby address → its walreceiver application_name
	syncOf    map[string]syncInfo  // the synchronous standbys of the shard's primary, last known
	refused   map[string]string    // promoted host refused (logged once)
	replWarn  map[string]bool      // addresses whose replication state could not be read (logged once)
}

// New returns a checker over deps.Router's shard map. It opens no
// connections and starts no goroutines: call Run once.
func New(cfg Config, deps Deps) *Checker {
	return &Checker{cfg: cfg, router: deps.Router, metrics: deps.Metrics, dial: deps.Dial, log: deps.Log,
		conns: map[string]Conn{}, lent: map[string]chan struct{}{}, banned: map[string]time.Time{}, prev: map[string]*hostHealth{},
		chosen: map[string]router.Host{}, rr: map[string]*atomic.Uint64{}, lsns: map[string][]lsnSample{},
		rounds: make(chan struct{}), kick: make(chan struct{}, 1), hostDown: deps.HostDown, answered: deps.Answered,
		waiting: map[string]int{}, downSince: map[string]time.Time{}, names: map[string]string{},
		syncOf: map[string]syncInfo{}, refused: map[string]string{}, replWarn: map[string]bool{}}
}

// Run checks every host until ctx ends, then closes the check
// connections; connections OnHost returns afterwards are closed rather
// than kept. Call it once.
//
// A round of checks starts every Interval; every fastInterval while a
// shard has no primary or a caller waits in WaitPrimary, so a promoted
// standby is seen soon; and at once when Recheck asks (at most one round
// per fastInterval). A round publishes once its checks have finished or
// its period has passed: a host whose check is still running (one that
// stopped answering takes up to Timeout) keeps its previous result
// meanwhile and is not checked twice at once, so a silent host delays
// nobody's view of the others.
func (h *Checker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		wg.Wait() // checks in flight end within Timeout
		h.mu.Lock()
		for _, u := range h.conns {
			_ = u.Close()
		}
		h.conns = map[string]Conn{}
		h.closed = true
		h.mu.Unlock()
	}()
	var resMu sync.Mutex
	latest := map[string]*hostHealth{} // address → last finished check
	answered := map[string]time.Time{} // address → when it last answered a check
	inflight := map[string]bool{}
	busy := map[string]bool{} // addresses whose last check found the host busy
	finished := make(chan struct{}, 1)
	wentDown := make(chan struct{}, 1) // a check found a host that answered before failing
	publish := func(m *router.Map) {
		resMu.Lock()
		var results []*hostHealth
		for _, j := range checkJobs(m) {
			if r := latest[j.host.Addr]; r != nil {
				c := *r // a check started under an older map reports under this one
				c.Shard, c.Configured = j.shard, j.role
				results = append(results, &c)
			}
		}
		resMu.Unlock()
		h.publish(m, results)
	}
	for {
		begun := time.Now()
		m := h.router.Map()
		h.started.Add(1)
		var mine []string
		resMu.Lock()
		for _, j := range checkJobs(m) {
			if inflight[j.host.Addr] {
				continue
			}
			inflight[j.host.Addr] = true
			mine = append(mine, j.host.Addr)
			deadline := h.checkDeadline(begun, answered[j.host.Addr])
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := h.check(ctx, j.shard, j.host, j.role, j.sync, deadline)
				resMu.Lock()
				prev := latest[j.host.Addr]
				kept := r.silent && h.busy(prev, r, busy[j.host.Addr]) // a busy host keeps its last result
				busy[j.host.Addr] = kept
				if !kept {
					latest[j.host.Addr] = r
				}
				if r.Up {
					answered[j.host.Addr] = r.CheckedAt.Add(r.took)
				}
				delete(inflight, j.host.Addr)
				resMu.Unlock()
				signal(finished)
				if !r.Up && !kept && prev != nil && prev.Up {
					signal(wentDown)
				}
			}()
		}
		resMu.Unlock()
		timer := time.NewTimer(h.period())
	collect:
		for {
			resMu.Lock()
			busy := false
			for _, a := range mine {
				busy = busy || inflight[a]
			}
			resMu.Unlock()
			if !busy {
				break
			}
			select {
			case <-finished:
			case <-timer.C:
				break collect
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
		timer.Stop()
		publish(m)
		wait := time.NewTimer(time.Until(begun.Add(h.period())))
	between:
		for {
			select {
			case <-ctx.Done():
				wait.Stop()
				return
			case <-wait.C:
				break between
			case <-wentDown:
				// A check that outlived its round failed: publish it now,
				// not with the next round.
				publish(m)
			case <-h.kick:
				wait.Stop()
				if gap := time.Until(begun.Add(h.fastInterval())); gap > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(gap):
					}
				}
				break between
			}
		}
	}
}

// signal wakes the receiver of a one-slot channel without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// checkDeadline bounds a check started at start of a host that last
// answered at answered (zero: never). A host is down once it has not
// answered for Timeout: a check sent soon after the host's last answer
// gets the rest of that Timeout, so a host that stops answering is found
// within Timeout of its last answer rather than Timeout after the first
// check it left unanswered. A check sent later (an Interval close to the
// Timeout) gets the whole Timeout.
func (h *Checker) checkDeadline(start, answered time.Time) time.Time {
	deadline := start.Add(h.cfg.Timeout)
	if silent := answered.Add(h.cfg.Timeout); silent.Before(deadline) && silent.Sub(start) >= h.cfg.Timeout/2 {
		return silent
	}
	return deadline
}

// checkJob is one host to check.
type checkJob struct {
	shard string
	host  router.Host
	role  router.Role
	sync  bool // the shard is synchronous: read its replication state too
}

func checkJobs(m *router.Map) []checkJob {
	var jobs []checkJob
	for _, sh := range m.Shards {
		jobs = append(jobs, checkJob{sh.Name, sh.Primary, router.Primary, sh.Synchronous})
		for _, r := range sh.Replicas {
			jobs = append(jobs, checkJob{sh.Name, r, router.Replica, sh.Synchronous})
		}
	}
	return jobs
}

// fastInterval is the period of the checks while a shard has no primary.
func (h *Checker) fastInterval() time.Duration { return min(h.cfg.Interval, 100*time.Millisecond) }

// period is the time between two rounds now: fastInterval while a shard
// has no primary or someone waits for one, else Interval.
func (h *Checker) period() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.downSince) > 0 || len(h.waiting) > 0 {
		return h.fastInterval()
	}
	return h.cfg.Interval
}

// Recheck asks Run to start a round of checks now (or as soon as the
// current one ends), for a caller that found a host failing before the
// checks did. It never blocks; calls while one is pending are merged.
func (h *Checker) Recheck() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// waitRound returns a channel closed when the next round of checks ends:
// its view published and its HostDown calls returned.
func (h *Checker) waitRound() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rounds
}

// round checks every host of the current map concurrently, waits for
// every check, and publishes the result.
func (h *Checker) round(ctx context.Context) {
	m := h.router.Map()
	h.started.Add(1)
	jobs := checkJobs(m)
	results := make([]*hostHealth, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = h.check(ctx, j.shard, j.host, j.role, j.sync, time.Now().Add(h.cfg.Timeout))
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	h.publish(m, results)
}

// check runs the health query on one host, bounded by deadline.
// On a synchronous shard it also reads the host's replication state.
func (h *Checker) check(ctx context.Context, shard string, host router.Host, role router.Role, sync bool, deadline time.Time) *hostHealth {
	res := &hostHealth{Host: host, Shard: shard, Configured: role, Checked: true, CheckedAt: time.Now()}
	res.budget = deadline.Sub(res.CheckedAt)
	defer func() { res.took = time.Since(res.CheckedAt) }()
	var row [][]byte
	err := h.onHost(ctx, router.Target{Shard: shard, Role: role, Host: host}, deadline, true, func(c Conn) error {
		err := c.Exec(healthQuery, func(v [][]byte) {
			row = make([][]byte, len(v))
			for i := range v {
				if v[i] != nil {
					row[i] = append([]byte{}, v[i]...)
				}
			}
		})
		if err != nil || !sync {
			return err
		}
		return readReplication(c, res)
	})
	if err == nil && len(row) != 4 {
		err = fmt.Errorf("health query returned no row")
	}
	if err != nil {
		res.LastError = err.Error()
		res.silent = isTimeout(err)
		return res
	}
	res.Up = true
	res.InRecovery = string(row[0]) == "t"
	res.LSN, _ = parseLSN(string(row[1]))
	res.ReceiveLSN, _ = parseLSN(string(row[2]))
	if res.InRecovery && res.ReceiveLSN > res.LSN && row[3] != nil {
		// Only a standby with received WAL still to replay is behind; an
		// idle primary makes the last replay timestamp old without lag.
		res.LagSeconds, _ = strconv.ParseFloat(string(row[3]), 64)
	}
	return res
}

// isTimeout reports whether err, a failed check's, means the host did not
// answer within the check's budget: a read, write or dial deadline, or
// the check connection lent elsewhere until the deadline.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, errLentTooLong) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// maxBusyAge bounds, in check timeouts, how old the last answered check
// of a host may be for a timed-out check to be excused as busy: past it
// the checker knows too little of the host (its role, its lag) to keep
// reporting what it last found.
const maxBusyAge = 3

// busy judges r, a check that timed out, against prev, the host's last
// finished check, counts the verdict in the metrics and reports it. The
// host was busy, not silent, when prev found it up no more than
// maxBusyAge timeouts ago and a pooled connection to it received an
// answer in the second half of the check's wait: the host answered
// requests while the check waited, so the check's own answer was late,
// not missing. The check loop then keeps prev as the host's result, so a
// loaded host is neither marked down nor has its idle pooled connections
// closed for an unanswered check. A silent host answers nothing at all,
// so it is still marked down within HEALTH_CHECK_TIMEOUT of its last
// answer. wasBusy says the host's previous check was found busy too: the
// event is logged once per run of busy checks. Called by the check loop.
func (h *Checker) busy(prev, r *hostHealth, wasBusy bool) bool {
	var heard time.Time
	if h.answered != nil {
		heard = h.answered(r.Host.Addr)
	}
	ok := prev != nil && prev.Up && heard.After(r.CheckedAt.Add(r.took/2)) &&
		r.CheckedAt.Sub(prev.CheckedAt.Add(prev.took)) <= maxBusyAge*h.cfg.Timeout
	verdict := "silent"
	if ok {
		verdict = "busy"
		if !wasBusy {
			h.log.Warn("health check unanswered while the host answers pooled requests: host busy, kept up",
				zap.String("shard", r.Shard), zap.String("addr", r.Host.Addr), zap.String("error", r.LastError),
				zap.Duration("check_took", r.took), zap.Duration("pooled_answer_ago", time.Since(heard)))
		}
	}
	h.metrics.HealthCheckTimeouts.WithLabelValues(r.Shard, r.Host.Addr, verdict).Inc()
	return ok
}

// OnHost runs fn on the checker's own connection to t's host (dialled
// when missing through Deps.Dial, so with no client's settings on it),
// bounded by Timeout. The connection is kept for the next call unless it
// broke (an error other than the server's *pgerr.Error, or a connection
// failure, class 08) or was left in a transaction; fn must not keep it. It returns fn's error, or the dial's.
// Safe for concurrent use: a caller finding the connection taken dials
// another (a check waits for it instead, see onHost).
func (h *Checker) OnHost(ctx context.Context, t router.Target, fn func(Conn) error) error {
	return h.onHost(ctx, t, time.Now().Add(h.cfg.Timeout), false, fn)
}

// errLentTooLong ends a check whose connection another caller kept until
// the check's deadline.
var errLentTooLong = errors.New("no answer within the check's deadline: the connection to the host stayed in use by another request of the sidecar's")

// onHost is OnHost bounded by deadline. With wait (a health check), a
// caller finding the kept connection lent to another caller waits for it,
// up to deadline, instead of dialling: the others (the two-phase
// recovery, a merge's catalog read) hold it for one short query, while a
// new connection on a loaded host can take seconds (its fork and TLS
// handshake), longer than the check may, and the host would be reported
// down although it answers.
func (h *Checker) onHost(ctx context.Context, t router.Target, deadline time.Time, wait bool, fn func(Conn) error) error {
	addr := t.Host.Addr
	h.mu.Lock()
	u := h.conns[addr]
	for u == nil && wait {
		back, ok := h.lent[addr]
		if !ok {
			break // none kept: dial
		}
		h.mu.Unlock()
		if h.lentWait != nil {
			h.lentWait()
		}
		if err := waitBack(ctx, back, deadline); err != nil {
			return err
		}
		h.mu.Lock()
		u = h.conns[addr]
	}
	var back chan struct{}
	if u != nil {
		delete(h.conns, addr)
		back = make(chan struct{})
		h.lent[addr] = back
	}
	h.mu.Unlock()
	if back != nil {
		defer func() {
			h.mu.Lock()
			delete(h.lent, addr)
			h.mu.Unlock()
			close(back)
		}()
	}
	if u == nil {
		cctx, cancel := context.WithDeadline(ctx, deadline)
		var err error
		u, err = h.dial(cctx, t)
		cancel()
		if err != nil {
			return err
		}
	}
	_ = u.SetDeadline(deadline)
	err := fn(u)
	_ = u.SetDeadline(time.Time{})
	// A connection that failed (an I/O error, or the sidecar's 08xxx for
	// one: a timed-out check) may yet deliver its late answer, which the
	// next check would read as its own: only a server's error leaves it
	// usable.
	var pe *pgerr.Error
	if (err != nil && (!errors.As(err, &pe) || pe.Code.Class() == "08")) || u.InTransaction() {
		_ = u.Close()
		return err
	}
	h.mu.Lock()
	if h.conns[addr] == nil && !h.closed {
		h.conns[addr], u = u, nil
	}
	h.mu.Unlock()
	if u != nil {
		_ = u.Close() // another caller put its connection back first
	}
	return err
}

// waitBack waits until back is closed, deadline passes (errLentTooLong)
// or ctx ends.
func waitBack(ctx context.Context, back <-chan struct{}, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-back:
		return nil
	case <-t.C:
		return errLentTooLong
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publish computes the shards' primaries, lags and bans from a round's
// results and swaps the view in.
func (h *Checker) publish(m *router.Map, results []*hostHealth) {
	cfg := h.cfg
	now := time.Now()
	byShard := map[string][]*hostHealth{}
	for _, r := range results {
		byShard[r.Shard] = append(byShard[r.Shard], r)
	}
	var wentDown []string
	h.mu.Lock()
	view := &healthView{Shards: map[string]*shardHealth{}, Round: h.started.Load()}
	for _, sh := range m.Shards {
		hosts := byShard[sh.Name]
		for _, r := range hosts {
			if r.StandbyName != "" {
				h.names[r.Host.Addr] = r.StandbyName
			}
		}
		// Keep the current primary while it answers as one; else take the
		// map's primary, else a promoted standby (on a synchronous shard,
		// only one that was the failed primary's synchronous standby).
		cur, ok := h.chosen[sh.Name]
		if !ok {
			cur = sh.Primary
		}
		var primary *hostHealth
		for _, r := range hosts {
			if r.Host.Addr == cur.Addr && r.Up && !r.InRecovery {
				primary = r
			}
		}
		problem := ""
		if primary == nil {
			for _, r := range hosts { // the map's primary first
				if !r.Up || r.InRecovery {
					continue
				}
				kind := h.standbyKindLocked(sh.Name, cur.Addr, r.Host.Addr)
				if sh.Synchronous && kind != "synchronous" {
					problem = fmt.Sprintf("%s answers as the primary of %s but was not seen as a synchronous standby of %s (%s): writes wait for %s or a synchronous standby",
						r.Host.Addr, sh.Name, cur.Addr, kind, cur.Addr)
					if h.refused[sh.Name] != r.Host.Addr {
						h.refused[sh.Name] = r.Host.Addr
						h.log.Error("promotion refused", zap.String("shard", sh.Name), zap.String("from", cur.Addr),
							zap.String("to", r.Host.Addr), zap.String("standby", kind),
							zap.String("reason", "the shard is synchronous and the host was not a synchronous standby of the failed primary: acknowledged writes may be missing there"))
						h.metrics.Promotions.WithLabelValues(sh.Name, kind, "refused").Inc()
					}
					continue
				}
				primary = r
				if r.Host.Addr != cur.Addr {
					fields := []zap.Field{zap.String("shard", sh.Name), zap.String("from", cur.Addr), zap.String("to", r.Host.Addr), zap.String("standby", kind)}
					if sh.Synchronous {
						fields = append(fields, zap.String("writes", "no acknowledged write lost: the host was a synchronous standby of the failed primary"))
					}
					h.log.Warn("shard primary changed", fields...)
					h.metrics.Failovers.WithLabelValues(sh.Name).Inc()
					h.metrics.Promotions.WithLabelValues(sh.Name, kind, "accepted").Inc()
				}
				break
			}
		}
		sv := &shardHealth{Primary: cur, Hosts: hosts, Synchronous: sh.Synchronous}
		h.metrics.Failovers.WithLabelValues(sh.Name) // exported at 0, for alerts on increase()
		if primary != nil {
			delete(h.refused, sh.Name)
			sv.Primary, sv.PrimaryOK = primary.Host, true
			h.chosen[sh.Name] = primary.Host
			samples := append(h.lsns[sh.Name], lsnSample{At: primary.CheckedAt, LSN: primary.LSN})
			if len(samples) > lsnSamples {
				samples = samples[len(samples)-lsnSamples:]
			}
			h.lsns[sh.Name] = samples
			if sh.Synchronous {
				h.recordSyncLocked(sh.Name, primary, hosts)
			}
			if since, ok := h.downSince[sh.Name]; ok {
				delete(h.downSince, sh.Name)
				h.log.Info("shard primary available", zap.String("shard", sh.Name), zap.String("addr", primary.Host.Addr),
					zap.Duration("after", now.Sub(since)), zap.Int("waiting", h.waiting[sh.Name]))
			}
		} else {
			if problem == "" {
				problem = fmt.Sprintf("no host of %s answers as a primary", sh.Name)
				for _, r := range hosts {
					if r.Host.Addr == cur.Addr && r.LastError != "" {
						problem += fmt.Sprintf(" (primary %s: %s)", cur.Addr, r.LastError)
					}
				}
			}
			sv.Problem = problem
			if _, ok := h.downSince[sh.Name]; !ok {
				h.downSince[sh.Name] = now
				h.log.Warn("shard primary unavailable", zap.String("shard", sh.Name), zap.String("primary", cur.Addr),
					zap.String("problem", problem))
			}
		}
		sv.DownSince = h.downSince[sh.Name]
		sv.Samples = h.lsns[sh.Name]
		if h.rr[sh.Name] == nil {
			h.rr[sh.Name] = &atomic.Uint64{}
		}
		sv.rr = h.rr[sh.Name]
		if si, ok := h.syncOf[sh.Name]; ok && sh.Synchronous {
			for _, r := range hosts {
				if r.SyncState == "" && si.sync[r.Host.Addr] {
					r.SyncState = "sync" // as last reported by the primary
				}
			}
		}
		for _, r := range hosts {
			prev := h.prev[r.Host.Addr]
			switch {
			case !r.Up:
				if prev == nil || prev.Up {
					h.log.Warn("host unhealthy", zap.String("shard", sh.Name), zap.String("addr", r.Host.Addr), zap.String("error", r.LastError),
						zap.Duration("check_took", r.took), zap.Duration("check_budget", r.budget))
					wentDown = append(wentDown, r.Host.Addr)
				}
				h.banned[r.Host.Addr] = now.Add(cfg.BanTime)
			case prev != nil && !prev.Up:
				h.log.Info("host healthy again", zap.String("shard", sh.Name), zap.String("addr", r.Host.Addr))
			}
			if r.Up && r.InRecovery && primary != nil && primary.LSN > r.LSN {
				r.LagBytes = primary.LSN - r.LSN
			}
			r.BannedUntil = h.banned[r.Host.Addr]
			h.prev[r.Host.Addr] = r
			h.metrics.HostUp.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(r.Up))
			h.metrics.HostBanned.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(r.BannedUntil.After(now)))
			for _, verdict := range [...]string{"busy", "silent"} { // exported at 0, for alerts on increase()
				h.metrics.HealthCheckTimeouts.WithLabelValues(sh.Name, r.Host.Addr, verdict)
			}
			if r.Up {
				h.metrics.HostRole.WithLabelValues(sh.Name, r.Host.Addr).Set(boolGauge(!r.InRecovery))
			}
			if r.InRecovery {
				h.metrics.ReplicaLagSeconds.WithLabelValues(sh.Name, r.Host.Addr).Set(r.LagSeconds)
				h.metrics.ReplicaLagBytes.WithLabelValues(sh.Name, r.Host.Addr).Set(float64(r.LagBytes))
			}
		}
		view.Shards[sh.Name] = sv
	}
	for name := range h.downSince {
		if _, ok := view.Shards[name]; !ok {
			delete(h.downSince, name) // no longer in the map
		}
	}
	h.view.Store(view)
	ended := h.rounds
	h.rounds = make(chan struct{})
	h.mu.Unlock()
	if h.hostDown != nil {
		for _, addr := range wentDown {
			h.hostDown(addr)
		}
	}
	close(ended) // after HostDown: a round's end includes its effects
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Ban leaves the replica at addr out of reads for BanTime after a session
// failed to use it (err, logged). A later ban extends an earlier one; a
// failed check bans too.
func (h *Checker) Ban(addr string, err error) {
	h.mu.Lock()
	h.banned[addr] = time.Now().Add(h.cfg.BanTime)
	h.mu.Unlock()
	h.log.Warn("replica banned", zap.String("addr", addr), zap.Duration("for", h.cfg.BanTime), zap.Error(err))
}

// Primary returns the host taking writes for shard: the one the last
// round chose, or configured (the map's primary) before the first round
// or for a shard the last round did not know.
func (h *Checker) Primary(shard string, configured router.Host) router.Host {
	if v := h.view.Load(); v != nil {
		if sv := v.Shards[shard]; sv != nil {
			return sv.Primary
		}
	}
	return configured
}

// PrimaryOK reports whether shard's primary answered its last check; true
// before the first check and for a shard the last round did not know.
func (h *Checker) PrimaryOK(shard string) bool {
	v := h.view.Load()
	if v == nil {
		return true
	}
	sv := v.Shards[shard]
	return sv == nil || sv.PrimaryOK
}

// Replica chooses a standby of shard for a read: healthy, not banned,
// within MaxLag and MaxLagBytes and, when the session wrote on the shard
// at wroteAt (non-zero), replayed past that write. While the shard has no
// primary its standbys keep serving reads (their lag in bytes is then
// unknown and not checked). Among those it takes
// the one with the fewest busy(host) when ReplicaSelection is least_busy
// and busy is not nil, else the next in round-robin order. ok is false
// when none qualifies (the read goes to the primary).
func (h *Checker) Replica(shard string, wroteAt time.Time, busy func(router.Host) int) (router.Host, bool) {
	v := h.view.Load()
	if v == nil {
		return router.Host{}, false
	}
	sv := v.Shards[shard]
	if sv == nil {
		return router.Host{}, false
	}
	// While the shard has no primary its standbys still serve reads: their
	// data stops at the primary's failure, as a lagging standby's would.
	var need uint64
	if !wroteAt.IsZero() {
		// The first primary position read by a check sent after the write
		// committed is at or past the commit.
		found := false
		for _, s := range sv.Samples {
			if s.At.After(wroteAt) {
				need, found = s.LSN, true
				break
			}
		}
		if !found {
			return router.Host{}, false
		}
	}
	cfg := h.cfg
	now := time.Now()
	h.mu.Lock()
	var ok []router.Host
	for _, r := range sv.Hosts {
		if !r.Up || !r.InRecovery || h.banned[r.Host.Addr].After(now) || r.LSN < need ||
			r.LagBytes > uint64(cfg.MaxLagBytes) || r.LagSeconds > cfg.MaxLag.Seconds() {
			continue
		}
		ok = append(ok, r.Host)
	}
	h.mu.Unlock()
	if len(ok) == 0 {
		return router.Host{}, false
	}
	if busy != nil && cfg.ReplicaSelection == "least_busy" {
		best, bestN := ok[0], busy(ok[0])
		for _, c := range ok[1:] {
			if n := busy(c); n < bestN {
				best, bestN = c, n
			}
		}
		return best, true
	}
	return ok[int(sv.rr.Add(1)%uint64(len(ok)))], true
}

// Ready returns nil once a round of checks has ended and some host of
// the map answers. A shard without a primary does not make the sidecar
// unready: its writes wait for a primary (up to FAILOVER_WAIT) while
// every other shard, and its replicas, keep serving; Status and the
// metrics show it.
func (h *Checker) Ready() error {
	v := h.view.Load()
	if v == nil {
		return fmt.Errorf("health checks have not completed yet")
	}
	for _, sv := range v.Shards {
		for _, r := range sv.Hosts {
			if r.Up {
				return nil
			}
		}
	}
	return fmt.Errorf("no host of the shard map answers its health checks")
}

// parseLSN parses a pg_lsn in its text form "X/Y".
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, err
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, err
	}
	return h<<32 | l, nil
}
