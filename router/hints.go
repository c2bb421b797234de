package router

import (
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/sqltext"
)

// HintName names a routing hint.
type HintName uint8

// Hint names.
const (
	// HintTeam is brownie.team_id: route keyless statements to this team's
	// shard, and refuse statements whose key names another team.
	HintTeam HintName = iota + 1
	// HintShard is brownie.shard: send statements to this shard, whatever
	// their keys say.
	HintShard
	// HintRole is brownie.role: "primary" keeps reads off replicas.
	HintRole
	// HintAll stands for every hint at once; it appears only with Reset,
	// for RESET ALL and DISCARD ALL.
	HintAll
)

// String returns the setting name: brownie.team_id, brownie.shard,
// brownie.role, or "all".
func (n HintName) String() string {
	switch n {
	case HintTeam:
		return "brownie.team_id"
	case HintShard:
		return "brownie.shard"
	case HintRole:
		return "brownie.role"
	case HintAll:
		return "all"
	}
	return "HintName(" + strconv.Itoa(int(n)) + ")"
}

// hintByName maps the part after "brownie." (or "brownie:") to a hint.
var hintByName = map[string]HintName{"team_id": HintTeam, "shard": HintShard, "role": HintRole}

// HintNamed returns the hint a setting name stands for ("brownie.team_id",
// any case), or false for any other setting.
func HintNamed(setting string) (HintName, bool) {
	if len(setting) < len("brownie.") || !strings.EqualFold(setting[:len("brownie.")], "brownie.") {
		return 0, false
	}
	n, ok := hintByName[strings.ToLower(setting[len("brownie."):])]
	return n, ok
}

// Hint is a routing hint a session sets: SET [LOCAL] brownie.team_id,
// RESET, set_config('brownie.shard', …), or startup options. Hints are
// validated but never spliced into SQL.
type Hint struct {
	Name HintName
	// Value is the value set; empty with Reset.
	Value string
	// Local is true for SET LOCAL and set_config(…, true): the hint ends
	// with the transaction.
	Local bool
	// Reset is true for RESET, SET … TO DEFAULT, RESET ALL and DISCARD ALL.
	Reset bool
}

// commentHints are the hints of a statement's leading comments.
type commentHints struct {
	team, shard string
	primary     bool
}

// scanLeadingComments reads the comments (/* … */, possibly nested, and
// -- … lines) and whitespace at the start of sql, collecting
// brownie:team_id=…, brownie:shard=… and brownie:role=… items, and returns
// the rest of the text. Only leading comments are read: a hint elsewhere
// in the statement is ignored. Errors are *pgerr.Error (22023).
func scanLeadingComments(sql string) (commentHints, string, error) {
	var ch commentHints
	i := 0
	for {
		for i < len(sql) && sqltext.IsSpace(sql[i]) {
			i++
		}
		body, end, ok, closed := sqltext.Comment(sql, i)
		if !ok || !closed {
			return ch, sql[i:], nil // an unclosed comment: the server reports it
		}
		i = end
		if err := ch.parse(body); err != nil {
			return ch, sql[i:], err
		}
	}
}

// parse reads brownie:name=value items from one comment's body; other
// words are ignored. Values may be quoted with ' or ".
func (ch *commentHints) parse(body string) error {
	const prefix = "brownie:"
	for {
		k := indexFold(body, prefix)
		if k < 0 {
			return nil
		}
		if k > 0 && !isHintSep(body[k-1]) {
			body = body[k+len(prefix):]
			continue
		}
		body = body[k+len(prefix):]
		eq := strings.IndexByte(body, '=')
		name := ""
		if eq >= 0 {
			name = strings.ToLower(body[:eq])
		}
		h, ok := hintByName[name]
		if !ok {
			end := 0
			for end < len(body) && !isHintSep(body[end]) {
				end++
			}
			return pgerr.Errorf(pgerr.InvalidParameterValue, "unknown routing hint %q in leading comment", prefix+body[:end]).
				WithHint("Use brownie:team_id=…, brownie:shard=… or brownie:role=primary.")
		}
		body = body[eq+1:]
		var val string
		if len(body) > 0 && (body[0] == '\'' || body[0] == '"') {
			q := body[0]
			end := strings.IndexByte(body[1:], q)
			if end < 0 {
				return pgerr.Errorf(pgerr.InvalidParameterValue, "unterminated quoted value for routing hint %s", h)
			}
			val, body = body[1:1+end], body[2+end:]
		} else {
			end := 0
			for end < len(body) && !isHintSep(body[end]) {
				end++
			}
			val, body = body[:end], body[end:]
		}
		if val == "" {
			return pgerr.Errorf(pgerr.InvalidParameterValue, "routing hint %s has no value", h)
		}
		switch h {
		case HintTeam:
			ch.team = val
		case HintShard:
			ch.shard = val
		case HintRole:
			primary, err := parseRole(val)
			if err != nil {
				return err
			}
			ch.primary = primary
		}
	}
}

func isHintSep(c byte) bool { return isPGSpace(c) || c == ',' || c == ';' }

func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

// parseRole parses a brownie.role value: primary, or replica/auto (the
// default: replicas when eligible).
func parseRole(v string) (primary bool, err error) {
	switch strings.ToLower(v) {
	case "primary":
		return true, nil
	case "replica", "auto":
		return false, nil
	}
	return false, pgerr.Errorf(pgerr.InvalidParameterValue, "invalid value for brownie.role: %q", v).
		WithHint("brownie.role is primary, replica or auto.")
}

// setStmt records SET/RESET of a brownie.* setting.
func (b *builder) setStmt(v *pg.VariableSetStmt) {
	if v.GetKind() == pg.VariableSetKind_VAR_RESET_ALL {
		b.p.setHints = append(b.p.setHints, setHint{h: Hint{Name: HintAll, Reset: true}, param: -1})
		return
	}
	name := strings.ToLower(v.GetName())
	if !strings.HasPrefix(name, "brownie.") {
		return
	}
	hn, ok := hintByName[name[len("brownie."):]]
	if !ok {
		b.hintErr(pgerr.Errorf(pgerr.UndefinedObject, "unrecognized configuration parameter %q", name).
			WithHint("The sidecar's settings are brownie.team_id, brownie.shard and brownie.role."))
		return
	}
	h := Hint{Name: hn, Local: v.GetIsLocal()}
	switch v.GetKind() {
	case pg.VariableSetKind_VAR_SET_VALUE:
		args := v.GetArgs()
		if len(args) != 1 || args[0].GetAConst() == nil {
			b.hintErr(pgerr.Errorf(pgerr.InvalidParameterValue, "SET %s takes one value", name))
			return
		}
		c := args[0].GetAConst()
		switch {
		case c.GetSval() != nil:
			h.Value = c.GetSval().GetSval()
		case c.GetIval() != nil:
			h.Value = strconv.FormatInt(int64(c.GetIval().GetIval()), 10)
		case c.GetFval() != nil:
			h.Value = c.GetFval().GetFval()
		default:
			b.hintErr(pgerr.Errorf(pgerr.InvalidParameterValue, "invalid value for %s", name))
			return
		}
	case pg.VariableSetKind_VAR_SET_DEFAULT, pg.VariableSetKind_VAR_RESET:
		h.Reset = true
	default:
		b.hintErr(pgerr.Errorf(pgerr.FeatureNotSupported, "SET %s FROM CURRENT is not supported", name))
		return
	}
	b.p.setHints = append(b.p.setHints, setHint{h: h, param: -1})
}

func (b *builder) hintErr(err error) {
	if b.p.hintErr == nil {
		b.p.hintErr = err
	}
}

// setConfig records SELECT set_config('brownie.…', value, is_local) in a
// top-level target list; the value may be a literal or a parameter.
func (b *builder) setConfig(sel *pg.SelectStmt) {
	for _, t := range sel.GetTargetList() {
		fc := t.GetResTarget().GetVal().GetFuncCall()
		if fc == nil || lastName(fc.GetFuncname()) != "set_config" || len(fc.GetArgs()) != 3 {
			continue
		}
		args := fc.GetArgs()
		nameConst := unwrapConst(args[0])
		if nameConst == nil || nameConst.GetSval() == nil {
			continue
		}
		name := strings.ToLower(nameConst.GetSval().GetSval())
		if !strings.HasPrefix(name, "brownie.") {
			continue
		}
		hn, ok := hintByName[name[len("brownie."):]]
		if !ok {
			b.hintErr(pgerr.Errorf(pgerr.UndefinedObject, "unrecognized configuration parameter %q", name).
				WithHint("The sidecar's settings are brownie.team_id, brownie.shard and brownie.role."))
			continue
		}
		sh := setHint{h: Hint{Name: hn}, param: -1}
		if c := unwrapConst(args[2]); c != nil && c.GetBoolval() != nil {
			sh.h.Local = c.GetBoolval().GetBoolval()
		} else {
			b.hintErr(pgerr.Errorf(pgerr.FeatureNotSupported, "set_config(%q, …) needs a constant is_local", name))
			continue
		}
		val := args[1]
		if tc := val.GetTypeCast(); tc != nil {
			val = tc.GetArg()
		}
		switch {
		case val.GetParamRef() != nil && val.GetParamRef().GetNumber() > 0:
			sh.param = int(val.GetParamRef().GetNumber()) - 1
		case val.GetAConst() != nil && val.GetAConst().GetSval() != nil:
			sh.h.Value = val.GetAConst().GetSval().GetSval()
		case val.GetAConst() != nil && val.GetAConst().GetIsnull():
			sh.h.Reset = true
		default:
			b.hintErr(pgerr.Errorf(pgerr.FeatureNotSupported, "set_config(%q, …) needs a constant or parameter value", name))
			continue
		}
		b.p.setHints = append(b.p.setHints, sh)
	}
}

func unwrapConst(n *pg.Node) *pg.A_Const {
	for n.GetTypeCast() != nil {
		n = n.GetTypeCast().GetArg()
	}
	return n.GetAConst()
}

// StartupHints extracts brownie.* settings from a startup packet's
// "options" value (as libpq sends it: -c name=value, -cname=value or
// --name=value, separated by spaces, backslash escaping the next
// character). It returns the hints and the options without them, so the
// caller may forward the rest upstream. Hint values are not checked
// against a map here; see Router.CheckHint. Errors are *pgerr.Error.
func StartupHints(options string) (hints []Hint, rest string, err error) {
	type token struct{ raw, val string }
	var toks []token
	for i := 0; i < len(options); {
		for i < len(options) && isPGSpace(options[i]) {
			i++
		}
		if i >= len(options) {
			break
		}
		start := i
		var val strings.Builder
		for i < len(options) && !isPGSpace(options[i]) {
			if options[i] == '\\' && i+1 < len(options) {
				i++
			}
			val.WriteByte(options[i])
			i++
		}
		toks = append(toks, token{raw: options[start:i], val: val.String()})
	}
	var kept []string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		var setting string
		raws := []string{t.raw}
		switch {
		case t.val == "-c" && i+1 < len(toks):
			i++
			setting = toks[i].val
			raws = append(raws, toks[i].raw)
		case strings.HasPrefix(t.val, "-c"):
			setting = t.val[2:]
		case strings.HasPrefix(t.val, "--"):
			setting = t.val[2:]
		default:
			kept = append(kept, t.raw)
			continue
		}
		eq := strings.IndexByte(setting, '=')
		if eq < 0 {
			kept = append(kept, raws...)
			continue
		}
		name := strings.ReplaceAll(strings.ToLower(setting[:eq]), "-", "_")
		if !strings.HasPrefix(name, "brownie.") {
			kept = append(kept, raws...)
			continue
		}
		hn, ok := hintByName[name[len("brownie."):]]
		if !ok {
			return nil, options, pgerr.Errorf(pgerr.UndefinedObject, "unrecognized configuration parameter %q", name).
				WithHint("The sidecar's settings are brownie.team_id, brownie.shard and brownie.role.")
		}
		hints = append(hints, Hint{Name: hn, Value: setting[eq+1:]})
	}
	return hints, strings.Join(kept, " "), nil
}
