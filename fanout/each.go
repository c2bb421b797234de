package fanout

import (
	"errors"
	"strings"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// EachShard runs sql, a statement Postgres refuses inside a transaction
// block (VACUUM, CREATE INDEX CONCURRENTLY…), on every shard of plan, one
// after the other, each on a connection of its own taken for it; the
// client gets the first shard's command tag, or an error naming the
// shards where it succeeded and where it failed, then ReadyForQuery. The
// error returned is the client's (it is gone).
func EachShard(env *Env, sql string, plan *Plan) error {
	var ok, failed []string
	var firstErr *pgerr.Error
	tag := ""
	for _, t := range plan.Targets {
		c, err := env.Session.Take(t)
		if err == nil {
			var ctag string
			ctag, err = c.Exec(sql, nil)
			if err == nil && tag == "" {
				tag = ctag
			}
			if c.TxStatus() == 'I' && (err == nil || errors.As(err, new(*pgerr.Error))) {
				env.Session.GiveBack([]Conn{c}, nil)
			} else {
				c.Destroy()
			}
		}
		if err != nil {
			failed = append(failed, t.Shard)
			if firstErr == nil {
				firstErr = pgerr.From(err)
			}
			continue
		}
		ok = append(ok, t.Shard)
	}
	if firstErr == nil {
		if err := env.Client.Send('C', append([]byte(tag), 0)); err != nil {
			return err
		}
		return env.Client.Ready('I')
	}
	e := *firstErr
	e.Severity = pgerr.SevError
	e.Message = "on shard " + failed[0] + ": " + e.Message
	e.Detail = strings.TrimSpace("it succeeded on " + listOrNone(ok) + " and failed on " + strings.Join(failed, ", ") + ". " + e.Detail)
	if err := env.Client.Send('E', e.Encode(nil)[5:]); err != nil {
		return err
	}
	return env.Client.Ready('I')
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "no shard"
	}
	return strings.Join(s, ", ")
}
