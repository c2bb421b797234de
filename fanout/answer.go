package fanout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
)

// This file reads a fan-out's answers and merges them into what the
// client sees (see Request).

// answer reads every leg's answer to one item and sends the client the
// merged answer.
func (f *Request) answer(it item) error {
	switch {
	case it.typ == '1' || it.typ == '3':
		f.emit(it.typ, nil)
		return nil
	case it.typ == 'x':
		f.sendError(it.err.Encode(nil)[5:])
		return nil
	case !it.sent:
		return nil
	case it.typ == 'Q' && it.merge != nil:
		return f.answerMergedQuery(it.merge)
	case it.typ == 'Q':
		return f.answerQuery(it)
	case it.typ == 'E' && it.merge != nil:
		return f.answerMergedExecute(it.merge)
	case it.typ == 'S':
		for _, l := range f.legs {
			l.exp = nil // every earlier item is answered; the server skips the rest after an error
			if err := f.readToReady(l); err != nil {
				return err
			}
		}
		return nil
	}
	var first [][]byte // the first leg's Describe answer (copies)
	var tags, others [][]byte
	empty, legFailed := false, false
	for i, l := range f.legs {
		primary := !f.plan.Broadcast || i == 0 // a broadcast answers with the first leg's rows
		if l.failed {
			continue
		}
		ok, err := f.skipInjected(l)
		if err != nil {
			return err
		}
		if !ok {
			legFailed = true
			continue
		}
		want := answers(it)
		keep := len(first) == 0 // this leg's Describe answer is the one sent
		for {
			typ, n, body, err := f.next(l)
			if err != nil {
				return err
			}
			switch {
			case typ == 'E':
				f.failLeg(l, body)
				legFailed = true
			case typ == 'D' && it.typ == 'E':
				if err := f.rowOf(primary, l, n, body); err != nil {
					return err
				}
				continue
			case strings.IndexByte(want, typ) < 0:
				return f.legLost(l, fmt.Errorf("unexpected message %q answering %q", typ, it.typ))
			case typ == 't':
				if keep {
					first = append(first, msgCopy(typ, body))
				}
				want = "Tn"
				continue
			case it.typ == 'D':
				if keep {
					first = append(first, msgCopy(typ, body))
				}
			case typ == 'C' && !primary:
				others = append(others, slices.Clone(body))
			case typ == 'C':
				tags = append(tags, slices.Clone(body))
			case typ == 'I':
				empty = true
			case typ == 's':
				return f.legLost(l, errors.New("portal suspended without a row limit"))
			}
			break
		}
	}
	switch {
	case legFailed:
		f.sendError(nil)
	case f.diverged(tags, others):
	case it.typ == 'B':
		f.emit('2', nil)
	case it.typ == 'C':
		f.emit('3', nil)
	case it.typ == 'D':
		for _, m := range first {
			if it.merge != nil && m[0] == 'T' {
				// A merged statement's portal: the shards describe
				// ShardSQL; the merge reads that, the client gets its own.
				it.merge.rowDesc = m[1:]
				desc, err := it.merge.plan.Describe(m[1:])
				if err != nil {
					f.sendError(pgerr.From(err).Encode(nil)[5:])
					break
				}
				m = append([]byte{'T'}, desc...)
			}
			if !it.hidden {
				f.emit(m[0], m[1:])
			}
		}
	case len(tags) > 0:
		f.emit('C', mergeTags(tags))
	case empty:
		f.emit('I', nil)
	}
	return nil
}

// answers lists the message types that answer an item (besides
// ErrorResponse, and DataRows before an Execute's end).
func answers(it item) string {
	switch it.typ {
	case 'B':
		return "2"
	case 'C':
		return "3"
	case 'D':
		if it.stmt {
			return "t"
		}
		return "Tn"
	}
	return "CIs" // Execute
}

// answerQuery reads the answers to a simple Query, result by result: each
// leg's next result (rows, then a command tag, an empty-query answer or an
// error), merged, until every leg has answered ReadyForQuery.
func (f *Request) answerQuery(it item) error {
	if it.copyIn {
		if err := f.copyIn(it.sql); err != nil {
			return err
		}
	}
	var copyOut *copyOptions // the COPY TO STDOUT being relayed
	for {
		var tags, others [][]byte
		empty, described, copyRefused, active, legFailed, copyDone := false, false, false, false, false, false
		for i, l := range f.legs {
			if l.done {
				continue
			}
			primary := !f.plan.Broadcast || i == 0 // a broadcast answers with the first leg's rows
			active = true
			ok, err := f.skipInjected(l)
			if err != nil {
				return err
			}
			if !ok {
				legFailed = true
			}
			if l.failed {
				if err := f.readToReady(l); err != nil {
					return err
				}
				continue
			}
		result:
			for {
				typ, n, body, err := f.next(l)
				if err != nil {
					return err
				}
				switch typ {
				case 'T':
					if !described && primary {
						f.emit('T', body)
						described = true
					}
				case 'D':
					if err := f.rowOf(primary, l, n, body); err != nil {
						return err
					}
				case 'C':
					if primary {
						tags = append(tags, slices.Clone(body))
					} else {
						others = append(others, slices.Clone(body))
					}
					break result
				case 'I':
					empty = true
					break result
				case 'E':
					f.failLeg(l, body)
					legFailed = true
					if err := f.readToReady(l); err != nil {
						return err
					}
					break result
				case 'Z':
					f.ready(l, body)
					break result
				case 'G', 'W':
					// A COPY FROM STDIN the sidecar did not expect (inside a
					// query of several statements): refuse it on the leg,
					// which then answers with an error.
					if err := f.write(l, wire.AppendCopyFail(nil, "COPY spanning shards inside a query of several statements is not supported")); err != nil {
						return err
					}
				case 'H':
					// COPY TO STDOUT: the shards' rows one after the other;
					// a header line comes from the first shard only.
					switch {
					case len(body) > 0 && body[0] == 1:
						copyRefused = true // binary: shards' streams cannot be joined
					case copyOut == nil:
						o, _ := parseCopy(it.sql)
						copyOut = &o
						f.emit('H', body)
						l.skipHeader = false
					default:
						l.skipHeader = copyOut.header
					}
				case 'd':
					switch {
					case copyRefused:
					case l.skipHeader:
						l.skipHeader = false
					default:
						f.emit('d', body)
					}
				case 'c':
					copyDone = true
				default:
					return f.legLost(l, fmt.Errorf("unexpected message %q answering a query", typ))
				}
			}
		}
		if !active {
			return nil
		}
		switch {
		case legFailed:
			f.sendError(nil)
		case f.diverged(tags, others):
		case copyRefused:
			e := pgerr.Errorf(pgerr.FeatureNotSupported, "binary COPY TO spanning shards is not supported")
			e.Hint = "copy in text or CSV format, or from each shard (brownie:shard hint)"
			f.env.Deps.Metrics.Refused.WithLabelValues("copy").Inc()
			f.sendError(e.Encode(nil)[5:])
		case len(tags) > 0:
			if copyDone {
				f.emit('c', nil)
			}
			f.emit('C', mergeTags(tags))
		case empty:
			f.emit('I', nil)
		}
	}
}

// skipInjected consumes the leg's answers to injected messages queued
// before its next item, and the item's marker. It reports false when the
// leg answered one of them with an error (the leg is then failed).
func (f *Request) skipInjected(l *leg) (bool, error) {
	for len(l.exp) > 0 {
		e := l.exp[0]
		if e.kind == expItem {
			l.exp = l.exp[1:]
			return true, nil
		}
		typ, _, body, err := f.next(l)
		if err != nil {
			return false, err
		}
		switch {
		case typ == 'E':
			f.failLeg(l, body)
			return false, nil
		case e.kind == expQuery && typ == 'C':
			continue // the wrapping BEGIN's tag; its ReadyForQuery follows
		case e.kind == expQuery && typ == 'Z':
		case e.kind == expParse && typ == '1':
			if e.key != "" {
				l.c.Parsed(e.key, true)
			}
		case e.kind == expClose && typ == '3':
		default:
			return false, f.legLost(l, fmt.Errorf("unexpected message %q", typ))
		}
		l.exp = l.exp[1:]
	}
	return true, nil
}

// failLeg records a leg's ErrorResponse: statements whose Parse the
// server will now skip are not prepared there.
func (f *Request) failLeg(l *leg, body []byte) {
	l.failed = true
	for _, e := range l.exp { // the server skips the Parses after the error
		if e.kind == expParse {
			l.c.Parsed(e.key, false)
		}
	}
	l.exp = nil
	if f.firstErr == nil {
		f.firstErr = slices.Clone(body)
	}
	f.env.Deps.Metrics.Errors.WithLabelValues("upstream", wire.ErrorClass(body)).Inc()
}

// readToReady discards a leg's messages up to its ReadyForQuery.
func (f *Request) readToReady(l *leg) error {
	for !l.done {
		typ, n, body, err := f.next(l)
		if err != nil {
			return err
		}
		switch typ {
		case 'Z':
			f.ready(l, body)
		case 'E':
			if !l.failed {
				f.failLeg(l, body)
			}
		case 'D':
			if body == nil {
				if err := l.c.Reader().CopyBody(io.Discard); err != nil {
					return f.legLost(l, err)
				}
			}
		}
		_ = n
	}
	return nil
}

// ready records a leg's ReadyForQuery.
func (f *Request) ready(l *leg, body []byte) {
	l.done = true
	if len(body) == 1 {
		l.status = body[0]
		l.c.Note('Z', body)
	}
	if !l.timed {
		l.timed = true
		l.c.ObserveQuery(time.Since(f.start))
	}
}

// next reads a leg's next message. Notices and notifications go to the
// client; ParameterStatus is recorded. A DataRow larger than largeMessage
// is returned with a nil body for the caller to stream.
func (f *Request) next(l *leg) (byte, int, []byte, error) {
	r := l.c.Reader()
	for {
		typ, n, err := r.Next()
		if err != nil {
			return 0, 0, nil, f.legLost(l, err)
		}
		if typ == 'D' && n > largeMessage {
			return typ, n, nil, nil
		}
		body, err := r.Body()
		if err != nil {
			return 0, 0, nil, f.legLost(l, err)
		}
		switch typ {
		case 'S':
			l.c.Note('S', body)
			continue
		case 'N':
			f.emit('N', body)
			continue
		case 'A':
			if len(body) >= 4 && binary.BigEndian.Uint32(body) == l.c.BackendPID() {
				binary.BigEndian.PutUint32(body, f.env.Session.PID())
			}
			f.emit('A', body)
			continue
		}
		return typ, n, body, nil
	}
}

// row sends one DataRow to the client (streaming a large one), or drops
// it once the request has failed.
func (f *Request) row(l *leg, n int, body []byte) error {
	if body != nil {
		f.emit('D', body)
		if l.c.Reader().Buffered() == 0 {
			f.flushClient()
		}
		return nil
	}
	if f.failed || f.clientGone {
		if err := l.c.Reader().CopyBody(io.Discard); err != nil {
			return f.legLost(l, err)
		}
		return nil
	}
	if err := f.env.Client.Stream('D', n, l.c.Reader()); err != nil {
		f.clientGone = true
		// CopyBody consumed only what the client took: drop the rest.
		if err := l.c.Reader().CopyBody(io.Discard); err != nil {
			return f.legLost(l, err)
		}
	}
	return nil
}

// rowOf sends a leg's DataRow to the client when the leg is the one
// answering (see row), or drops it.
func (f *Request) rowOf(answering bool, l *leg, n int, body []byte) error {
	if answering {
		return f.row(l, n, body)
	}
	if body == nil {
		if err := l.c.Reader().CopyBody(io.Discard); err != nil {
			return f.legLost(l, err)
		}
	}
	return nil
}

// diverged checks a broadcast's command tags: every shard must report
// what the first did (the same rows of a replicated table changed). It
// fails the request and reports true when one did not: the shards'
// copies differ, and committing would hide it.
func (f *Request) diverged(tags, others [][]byte) bool {
	if !f.plan.Broadcast || len(tags) != 1 {
		return false
	}
	for i, t := range others {
		if string(t) != string(tags[0]) {
			shard := f.legs[i+1].c.Target().Shard
			e := pgerr.Errorf(pgerr.DataCorrupted, "replicated tables differ between shards: %s reported %q where %s reported %q",
				shard, strings.TrimSuffix(string(t), "\x00"), f.legs[0].c.Target().Shard, strings.TrimSuffix(string(tags[0]), "\x00"))
			e.Hint = "compare the replicated tables' rows on every shard and repair them; the statement was not applied"
			f.env.Log.Error("replicated tables differ between shards", zap.String("shard", shard), zap.String("statement_tag", string(tags[0])))
			f.sendError(e.Encode(nil)[5:])
			return true
		}
	}
	return false
}

// emit writes one message to the client, unless the request has failed
// (notices and errors excepted) or the client is gone.
func (f *Request) emit(typ byte, body []byte) {
	if f.clientGone || (f.failed && typ != 'N' && typ != 'A') {
		return
	}
	err := f.env.Client.Send(typ, body)
	f.env.Deps.Metrics.ToClient.Add(float64(len(body) + 5))
	if err != nil {
		f.clientGone = true
	}
}

// sendError sends an ErrorResponse (body; nil for the first error a leg
// answered) and fails the request: the client sees one error per request.
func (f *Request) sendError(body []byte) {
	if f.failed {
		return
	}
	if body == nil {
		body = f.firstErr
	} else if f.firstErr == nil {
		f.firstErr = body
	}
	f.emit('E', body)
	f.failed = true
}

// flushClient flushes what was sent to the client; a failure marks the
// client gone (the request still runs to its end upstream).
func (f *Request) flushClient() {
	if f.clientGone {
		return
	}
	if err := f.env.Client.Flush(); err != nil {
		f.clientGone = true
	}
}

// mergeTags merges the command tags of one statement run on several
// shards: row counts are summed ("SELECT 7", "UPDATE 3", "INSERT 0 5");
// other tags are the first leg's.
func mergeTags(tags [][]byte) []byte {
	first := string(tags[0])
	first = first[:len(first)-1] // NUL
	i := len(first) - 1
	for i >= 0 && first[i] >= '0' && first[i] <= '9' {
		i--
	}
	if i < 0 || i == len(first)-1 || first[i] != ' ' {
		return tags[0]
	}
	prefix := first[:i+1]
	var sum uint64
	for _, t := range tags {
		s := string(t[:len(t)-1])
		if len(s) <= len(prefix) || s[:len(prefix)] != prefix {
			return tags[0]
		}
		n, err := strconv.ParseUint(s[len(prefix):], 10, 64)
		if err != nil {
			return tags[0]
		}
		sum += n
	}
	return append(strconv.AppendUint([]byte(prefix), sum, 10), 0)
}

func msgCopy(typ byte, body []byte) []byte { return append([]byte{typ}, body...) }
