// Package sqltree prints rewritten pg_query parse trees back to SQL.
//
// The router and the merge planner rewrite statements as parse trees and
// send the deparser's text to the servers. The deparser has blind spots:
// it prints a $0 parameter as "?" and a few rare constructs (a type
// modifier given by an expression) as text that does not parse. Print is
// the one guard against both, so that no rewriter sends a mangled
// statement. The package is pure and safe for concurrent use.
package sqltree

import (
	"errors"
	"fmt"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ErrParamZero reports a tree holding a $0 parameter. No Bind can supply
// one and the deparser cannot print it, so a caller leaves the statement
// as the client wrote it and lets the server report its error.
var ErrParamZero = errors.New("the statement holds a $0 parameter")

// Print deparses tree and checks that the text parses back into as many
// statements. It returns ErrParamZero for a tree holding $0, and another
// error when the deparser fails or its text does not parse back; the
// caller turns those into its own refusal. tree is only read.
func Print(tree *pg.ParseResult) (string, error) {
	if HasParamZero(tree.ProtoReflect()) {
		return "", ErrParamZero
	}
	out, err := pg.Deparse(tree)
	if err != nil {
		return "", err
	}
	back, err := pg.Parse(out)
	if err != nil {
		return "", fmt.Errorf("the printed statement does not parse: %w", err)
	}
	if got, want := len(back.GetStmts()), len(tree.GetStmts()); got != want {
		return "", fmt.Errorf("the printed text holds %d statements, not %d", got, want)
	}
	return out, nil
}

// HasParamZero reports whether m holds a parameter numbered 0 or below
// anywhere, subqueries included.
func HasParamZero(m protoreflect.Message) bool {
	if r, ok := m.Interface().(*pg.ParamRef); ok && r.GetNumber() <= 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind || fd.IsMap():
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && !found; i++ {
				found = HasParamZero(l.Get(i).Message())
			}
		default:
			found = HasParamZero(v.Message())
		}
		return !found
	})
	return found
}
