package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// op is one statement a worker ran: when it started and ended (offsets
// from the start of the load), whether it was a read, which shard its key
// is on, and, for a failure, the failure's class (see classify).
type op struct {
	start, end time.Duration
	read       bool
	shard      int
	class      string // "" when the statement succeeded
	connect    bool   // the failure was at connect, before any statement
	worker     int    // which reader or writer ran it
}

// event is a fault injected at an offset from the start of the load.
type event struct {
	name string
	cmd  string        // how it was injected
	at   time.Duration // when the fault began
	done time.Duration // when the command injecting it returned
}

// result is everything one run measured. It is pure data: render it with
// markdown.
type result struct {
	variant  string // "asynchronous replication" or "synchronous replication"
	commit   string
	duration time.Duration
	ops      []op
	events   []event // in time order
	// skipped says which scheduled faults were not injected, and why.
	skipped []string
	// killEvent and promoteEvent index events (-1 when absent).
	killEvent, promoteEvent int
	// acked and lost count acknowledged writes per shard and those
	// missing on the shard's primary after the run, checked row by row.
	acked, lost [2]int
	sync        bool
}

// window is a stretch of the run between two events.
type window struct {
	name       string
	from, to   time.Duration
	reads      int
	writes     int
	readErrs   int
	writeErrs  int
	readClass  map[string]int
	writeClass map[string]int
}

// windows splits the run at each event and counts the statements and
// failures that ended in each stretch.
func (r *result) windows() []window {
	ws := []window{{name: "before any fault", from: 0}}
	for _, e := range r.events {
		ws[len(ws)-1].to = e.at
		ws = append(ws, window{name: "after " + e.name, from: e.at})
	}
	ws[len(ws)-1].to = r.duration
	for i := range ws {
		ws[i].readClass, ws[i].writeClass = map[string]int{}, map[string]int{}
	}
	for _, o := range r.ops {
		i := sort.Search(len(ws), func(i int) bool { return ws[i].to > o.end })
		if i == len(ws) {
			i = len(ws) - 1
		}
		w := &ws[i]
		switch {
		case o.read && o.class == "":
			w.reads++
		case o.read:
			w.readErrs++
			w.readClass[o.class]++
		case o.class == "":
			w.writes++
		default:
			w.writeErrs++
			w.writeClass[o.class]++
		}
	}
	return ws
}

// inFlightAt counts the writers that had a write on shard running while
// event e happened (started before its command returned, ended after it
// began) that was not acknowledged before the command returned: the
// writes whose outcome the fault could touch. Each writer counts once,
// so a writer failing again and again during the fault does not raise
// its own allowance.
func (r *result) inFlightAt(e event, shard int) int {
	seen := map[int]bool{}
	for _, o := range r.ops {
		if o.read || o.connect || o.shard != shard || o.start >= e.done || o.end <= e.at {
			continue
		}
		if o.class == "" && o.end < e.done {
			continue
		}
		seen[o.worker] = true
	}
	return len(seen)
}

// firstWriteAfter is the offset of the first write on shard acknowledged
// after at, if any.
func (r *result) firstWriteAfter(at time.Duration, shard int) (time.Duration, bool) {
	best, ok := time.Duration(0), false
	for _, o := range r.ops {
		if !o.read && o.class == "" && o.shard == shard && o.end > at && (!ok || o.end < best) {
			best, ok = o.end, true
		}
	}
	return best, ok
}

// errorsFrom counts read and write failures that ended at or after from.
func (r *result) errorsFrom(from time.Duration, to time.Duration) (reads, writes int) {
	for _, o := range r.ops {
		if o.class == "" || o.end < from || o.end >= to {
			continue
		}
		if o.read {
			reads++
		} else {
			writes++
		}
	}
	return reads, writes
}

// target is one of the failover targets and whether the run met it.
type target struct {
	name, got string
	met       bool
	judged    bool // false: the run could not measure it
}

func (r *result) targets() []target {
	var ts []target
	replica := -1
	for i, e := range r.events {
		if strings.Contains(e.name, "replica stop") {
			replica = i
		}
	}
	if replica >= 0 {
		to := r.duration
		if replica+1 < len(r.events) {
			to = r.events[replica+1].at
		}
		re, we := r.errorsFrom(r.events[replica].at, to)
		ts = append(ts, target{name: "replica death: 0 read errors, 0 write errors", got: fmt.Sprintf("%d read, %d write errors", re, we), met: re == 0 && we == 0, judged: true})
	} else {
		ts = append(ts, target{name: "replica death: 0 read errors, 0 write errors", got: "not measured (replica not stopped)"})
	}
	if r.killEvent >= 0 {
		kill := r.events[r.killEvent]
		re, we := r.errorsFrom(kill.at, r.duration)
		inflight := r.inFlightAt(kill, 1)
		ts = append(ts,
			target{name: "primary death: 0 read errors", got: fmt.Sprintf("%d", re), met: re == 0, judged: true},
			target{name: "primary death: write errors ≤ writes in flight at the kill", got: fmt.Sprintf("%d errors, %d in flight", we, inflight), met: we <= inflight, judged: true})
		if r.promoteEvent >= 0 {
			p := r.events[r.promoteEvent]
			if first, ok := r.firstWriteAfter(p.at, 1); ok {
				d := first - p.at
				ts = append(ts, target{name: "writes resume ≤ 1 s after the promotion", got: ms(d), met: d <= time.Second, judged: true})
			} else {
				ts = append(ts, target{name: "writes resume ≤ 1 s after the promotion", got: "no write on shard-1 after the promotion", judged: true})
			}
		}
	}
	lost := r.lost[0] + r.lost[1]
	got := fmt.Sprintf("%d of %d", lost, r.acked[0]+r.acked[1])
	if r.sync {
		ts = append(ts, target{name: "synchronous replication: 0 acknowledged writes lost", got: got, met: lost == 0, judged: true})
	} else {
		ts = append(ts, target{name: "acknowledged writes lost (asynchronous: no target)", got: got})
	}
	return ts
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// markdown renders the run as a markdown section: the events, a table of
// statements and failures per window, the failure classes, and the
// targets with a verdict each.
func (r *result) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### Chaos run, %s\n\n", r.variant)
	if r.commit != "" {
		fmt.Fprintf(&b, "Commit %s, %s run, 3 readers and 2 writers through the sidecar.\n\n", r.commit, secs(r.duration))
	}
	for _, e := range r.events {
		fmt.Fprintf(&b, "- %s: %s (`%s`, returned after %s)\n", secs(e.at), e.name, e.cmd, ms(e.done-e.at))
	}
	for _, s := range r.skipped {
		fmt.Fprintf(&b, "- not injected: %s\n", s)
	}
	b.WriteString("\n| window | reads ok | read errors | writes ok | write errors |\n|---|---:|---:|---:|---:|\n")
	ws := r.windows()
	for _, w := range ws {
		fmt.Fprintf(&b, "| %s (%s–%s) | %d | %d | %d | %d |\n", w.name, secs(w.from), secs(w.to), w.reads, w.readErrs, w.writes, w.writeErrs)
	}
	var classes []string
	for _, w := range ws {
		for _, kind := range []struct {
			what string
			m    map[string]int
		}{{"read", w.readClass}, {"write", w.writeClass}} {
			keys := make([]string, 0, len(kind.m))
			for k := range kind.m {
				keys = append(keys, k)
			}
			sort.Slice(keys, func(i, j int) bool {
				if kind.m[keys[i]] != kind.m[keys[j]] {
					return kind.m[keys[i]] > kind.m[keys[j]]
				}
				return keys[i] < keys[j]
			})
			for _, k := range keys {
				classes = append(classes, fmt.Sprintf("| %s | %s | %d | %s |", w.name, kind.what, kind.m[k], strings.ReplaceAll(k, "|", "\\|")))
			}
		}
	}
	if len(classes) > 0 {
		b.WriteString("\n| window | statement | count | failure |\n|---|---|---:|---|\n")
		b.WriteString(strings.Join(classes, "\n"))
		b.WriteString("\n")
	}
	b.WriteString("\n")
	if r.killEvent >= 0 {
		fmt.Fprintf(&b, "Writers with a write on shard-1 in flight at the kill (running while `pg_ctl stop` ran, not acknowledged before it returned): %d.", r.inFlightAt(r.events[r.killEvent], 1))
		if r.promoteEvent >= 0 {
			p := r.events[r.promoteEvent]
			if first, ok := r.firstWriteAfter(p.at, 1); ok {
				fmt.Fprintf(&b, " First write on shard-1 acknowledged %s after the promotion was started (%s after it completed, %s after the kill).", ms(first-p.at), ms(first-p.done), ms(first-r.events[r.killEvent].at))
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Acknowledged writes lost (each checked on its shard's current primary): shard-0 %d of %d, shard-1 %d of %d.\n\n",
		r.lost[0], r.acked[0], r.lost[1], r.acked[1])
	b.WriteString("| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range r.targets() {
		v := "—"
		if t.judged {
			v = "not met"
			if t.met {
				v = "met"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.name, t.got, v)
	}
	return b.String()
}

var digitsRE = regexp.MustCompile(`[0-9]+`)

// classify names a failure's class: an ErrorResponse with its severity,
// SQLSTATE and message (digits folded to N, so host ports and pids do
// not split a class), a bare close (the connection ended without an
// ErrorResponse), a timeout, or another error. A failure at connect is
// prefixed "connect: ".
func classify(err error, connect bool) string {
	prefix := ""
	if connect {
		prefix = "connect: "
	}
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		return fmt.Sprintf("%sErrorResponse %s %s: %s", prefix, pe.Severity, pe.Code, fold(pe.Message))
	case errors.Is(err, context.DeadlineExceeded):
		return prefix + "timeout (no answer)"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed), isEOFText(err):
		return prefix + "bare close (no ErrorResponse)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return prefix + "connection refused"
	default:
		return prefix + "other: " + fold(err.Error())
	}
}

// isEOFText catches drivers' wrappings that keep only the text.
func isEOFText(err error) bool {
	s := err.Error()
	return strings.HasSuffix(s, "EOF") || strings.Contains(s, "connection reset by peer") || strings.Contains(s, "broken pipe")
}

func fold(s string) string {
	s = digitsRE.ReplaceAllString(s, "N")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}
