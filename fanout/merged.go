package fanout

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/merge"
)

// A read that runs on several shards is merged (package merge) so that the
// client sees what one database holding every row would return: the
// shards run the plan's ShardSQL, the first shard's RowDescription is
// turned into the client's, and the shards' rows go through Plan.Run.
// Reads merge has nothing to do for (no ORDER BY, LIMIT, aggregate,
// DISTINCT) are concatenated as they come.

// mergeState is one merged execution in a request: the plan and what the
// Bind said (nil for a simple Query), and the shards' RowDescription.
type mergeState struct {
	plan                  *merge.Plan
	params                [][]byte
	paramFormats          []int16
	clientFormats         []int16
	rowDesc               []byte // the first shard's RowDescription for ShardSQL (formats as sent)
	counted, hasDescribed bool
}

// merging reports whether the request is a read whose rows may need
// merging: on several shards, not a broadcast.
func (f *Request) merging() bool {
	return f.plan.ReadOnly && !f.plan.Broadcast && len(f.legs) > 1
}

// refusalReason is the metric label of a merge refusal: a bounded set
// read from the message of merge's 0A000 errors.
func refusalReason(msg string) string {
	m := strings.ToLower(msg)
	for _, r := range []struct{ word, label string }{
		{"window", "window_function"}, {"having", "having"}, {"(distinct", "distinct_aggregate"},
		{"grouping sets", "grouping_sets"}, {"intersect", "set_operation"}, {"except", "set_operation"},
		{"union", "set_operation"}, {"for update", "locking"}, {"collat", "collation"},
		{"several statements", "multiple_statements"}, {"aggregate", "aggregate"},
		{"limit", "limit"}, {"offset", "limit"}, {"order by", "order_by"}, {"distinct on", "distinct_on"},
	} {
		if strings.Contains(m, r.word) {
			return r.label
		}
	}
	return "other"
}

// checkCollation refuses, when the shards' database collation does not
// sort text bytewise, a merge that compares values (every kind but a
// plain LIMIT): the merge compares text bytewise.
func (f *Request) checkCollation(p *merge.Plan) error {
	kinds := p.Kinds()
	if len(kinds) == 1 && kinds[0] == "limit" {
		return nil
	}
	ok, err := f.env.Deps.Catalog.bytewiseText()
	if err != nil || ok {
		return nil // unknown: the merge runs; the shards' own order is C in every supported set-up
	}
	e := pgerr.Errorf(pgerr.FeatureNotSupported, "ORDER BY, GROUP BY, DISTINCT and min/max across shards need the database collation \"C\"")
	e.Hint = "create the database with LC_COLLATE 'C', or add the team key (team_id) so the statement runs on one shard"
	f.env.Deps.Metrics.Refused.WithLabelValues("collation").Inc()
	return e
}

// planQueryMerge returns the text the legs run for a simple Query of the
// request and the merge of its rows (nil: concatenate), or the error
// refusing it.
func (f *Request) planQueryMerge(sql string) (string, *mergeState, error) {
	if !f.merging() {
		return sql, nil, nil
	}
	p, err := f.env.Deps.Catalog.mergePlan(sql)
	if err != nil || p == nil {
		f.refused(err)
		return sql, nil, err
	}
	if err := f.checkCollation(p); err != nil {
		return sql, nil, err
	}
	return p.ShardSQL(), &mergeState{plan: p}, nil
}

// refused counts a statement refused as impossible to merge exactly.
func (f *Request) refused(err error) {
	var pe *pgerr.Error
	if errors.As(err, &pe) && pe.Code == pgerr.FeatureNotSupported {
		f.env.Deps.Metrics.Refused.WithLabelValues(refusalReason(pe.Message)).Inc()
	}
}

// mergedBind prepares a Bind of def in a read spanning shards: the
// statement the legs prepare (def, or its ShardSQL rewrite, cached on
// def), the Bind's result formats for the legs, and the merge state
// (nil: concatenate). An error refuses the statement.
func (f *Request) mergedBind(def Stmt, body []byte) (Stmt, []int16, *mergeState, error) {
	if !f.merging() {
		return def, nil, nil, nil
	}
	p, err := f.env.Deps.Catalog.mergePlan(def.SQL())
	if err != nil {
		f.refused(err)
		return nil, nil, nil, err
	}
	if p == nil {
		return def, nil, nil, nil
	}
	if err := f.checkCollation(p); err != nil {
		return nil, nil, nil, err
	}
	var b pgproto3.Bind
	if err := b.Decode(body); err != nil {
		return nil, nil, nil, pgerr.Fatalf(pgerr.ProtocolViolation, "invalid Bind message")
	}
	ms := &mergeState{plan: p, params: b.Parameters, paramFormats: b.ParameterFormatCodes, clientFormats: b.ResultFormatCodes}
	formats := b.ResultFormatCodes
	if len(formats) > 1 {
		formats = p.ShardResultFormats(formats, len(formats)+p.HiddenColumns())
	}
	return def.Variant(p.ShardSQL()), formats, ms, nil
}

// appendBind appends a Bind of the legs' statement sname with the
// client's Bind's portal and parameters and the given result formats.
func appendBind(out []byte, body []byte, sname string, formats []int16) ([]byte, error) {
	var b pgproto3.Bind
	if err := b.Decode(body); err != nil {
		return nil, err
	}
	b.PreparedStatement = sname
	b.ResultFormatCodes = formats
	return b.Encode(out)
}

// legSource is one leg's rows for merge.Run.
type legSource struct {
	f    *Request
	l    *leg
	done bool
	tag  []byte
}

// errLegFailed stops a merge when a leg answered an error (the request
// then reports the leg's first error).
var errLegFailed = errors.New("a shard answered an error")

func (s *legSource) Next() ([]byte, bool, error) {
	if s.done {
		return nil, false, nil
	}
	for {
		typ, _, body, err := s.f.next(s.l)
		if err != nil {
			return nil, false, err
		}
		switch typ {
		case 'D':
			if body == nil { // larger than largeMessage: read it whole
				if body, err = s.l.c.Reader().Body(); err != nil {
					return nil, false, s.f.legLost(s.l, err)
				}
			}
			return body, true, nil
		case 'C':
			s.done, s.tag = true, append([]byte(nil), body...)
			return nil, false, nil
		case 'I', 's':
			s.done = true
			return nil, false, nil
		case 'E':
			s.done = true
			s.f.failLeg(s.l, body)
			return nil, false, errLegFailed
		case 'T':
			continue
		default:
			return nil, false, s.f.legLost(s.l, fmt.Errorf("unexpected message %q in a merged result", typ))
		}
	}
}

// drain reads what the merge left unread of the leg's result.
func (s *legSource) drain() error {
	for !s.done {
		if _, _, err := s.Next(); err != nil && !errors.Is(err, errLegFailed) {
			return err
		}
	}
	return nil
}

// runMerge merges the legs' rows for one result whose RowDescription is
// known (ms.rowDesc) and answers the client's rows and command tag.
func (f *Request) runMerge(ms *mergeState) error {
	sources := make([]*legSource, len(f.legs))
	srcs := make([]merge.Source, len(f.legs))
	for i, l := range f.legs {
		sources[i] = &legSource{f: f, l: l}
		if l.failed {
			sources[i].done = true
		}
		srcs[i] = sources[i]
	}
	shard := f.legs[0].c.Target().Shard // whose RowDescription ms.rowDesc is
	opt := merge.Options{EnumOrder: func(oid uint32) (map[string]float64, bool) { return f.env.Deps.Catalog.enumOrder(shard, oid) }}
	emitted, err := ms.plan.Run(ms.params, ms.paramFormats, ms.rowDesc, ms.clientFormats, srcs, func(row []byte) error {
		f.emit('D', row)
		if f.clientGone {
			return errClientGone
		}
		return nil
	}, opt)
	for _, s := range sources {
		if derr := s.drain(); derr != nil {
			return derr
		}
	}
	var pe *pgerr.Error
	switch {
	case errors.Is(err, errLegFailed):
		f.sendError(nil)
	case errors.Is(err, errClientGone):
	case errors.As(err, &pe):
		f.refused(err)
		f.sendError(pe.Encode(nil)[5:])
	case err != nil:
		return err // a leg lost
	default:
		if !ms.counted {
			ms.counted = true
			for _, k := range ms.plan.Kinds() {
				f.env.Deps.Metrics.MergedReads.WithLabelValues(k).Inc()
			}
		}
		f.emit('C', []byte("SELECT "+strconv.FormatInt(emitted, 10)+"\x00"))
	}
	return nil
}

// errClientGone stops a merge whose client left.
var errClientGone = errors.New("client gone")

// answerMergedQuery answers a simple Query whose rows are merged: every
// leg's RowDescription first (the client gets the first one, described
// for the client), then the merged rows, then every leg's ReadyForQuery.
func (f *Request) answerMergedQuery(ms *mergeState) error {
	for _, l := range f.legs {
		ok, err := f.skipInjected(l)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
	header:
		for {
			typ, _, body, err := f.next(l)
			if err != nil {
				return err
			}
			switch typ {
			case 'T':
				if ms.rowDesc == nil {
					ms.rowDesc = append([]byte(nil), body...)
				}
				break header
			case 'E':
				f.failLeg(l, body)
				break header
			default:
				return f.legLost(l, fmt.Errorf("unexpected message %q before a merged result", typ))
			}
		}
	}
	failed := false
	for _, l := range f.legs {
		failed = failed || l.failed
	}
	if !failed {
		desc, err := ms.plan.Describe(ms.rowDesc)
		if err != nil {
			f.sendError(pgerr.From(err).Encode(nil)[5:])
		} else {
			f.emit('T', desc)
			if err := f.runMerge(ms); err != nil {
				return err
			}
		}
	} else {
		f.sendError(nil)
	}
	for _, l := range f.legs {
		if err := f.readToReady(l); err != nil {
			return err
		}
	}
	return nil
}

// describePortal appends a Describe of the portal an Execute names, for a
// merge that needs the shards' RowDescription: the legs answer it and the
// sidecar keeps the answer (the client asked for none).
func describePortal(out []byte, executeBody []byte) []byte {
	portal, _, _ := wire.CString(executeBody)
	out = wire.AppendHeader(out, 'D', 1+len(portal)+1)
	return append(append(append(out, 'P'), portal...), 0)
}

// answerMergedExecute answers an Execute whose rows are merged: the legs'
// earlier answers are consumed, then their rows go through the merge.
func (f *Request) answerMergedExecute(ms *mergeState) error {
	for _, l := range f.legs {
		if l.failed {
			continue
		}
		if _, err := f.skipInjected(l); err != nil {
			return err
		}
	}
	failed := false
	for _, l := range f.legs {
		failed = failed || l.failed
	}
	switch {
	case failed:
		f.sendError(nil)
		for _, l := range f.legs {
			if !l.failed {
				if err := (&legSource{f: f, l: l}).drain(); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return f.runMerge(ms)
}
