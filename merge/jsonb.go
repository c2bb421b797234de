package merge

import (
	"bytes"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file orders jsonb values exactly as compareJsonbContainers does. It
// reads jsonb_out's text (which jsonb_send also carries after a version
// byte): objects list their keys in storage order (shorter keys first, then
// bytewise), which is the order the server's iterator walks them in.

// jbv types in the order PostgreSQL's enum jbvType gives them; scalars
// compare below containers.
const (
	jbvNull    = 0x0
	jbvString  = 0x1
	jbvNumeric = 0x2
	jbvBool    = 0x3
	jbvArray   = 0x10
	jbvObject  = 0x11
)

// jnode is one parsed jsonb value.
type jnode struct {
	typ   int
	str   []byte   // jbvString (unescaped)
	num   *decimal // jbvNumeric
	b     bool     // jbvBool
	elems []*jnode // jbvArray
	keys  [][]byte // jbvObject, storage order
	vals  []*jnode // jbvObject
}

// parseJSON parses one JSON document.
func parseJSON(s []byte) (*jnode, error) {
	p := jsonParser{s: s}
	n, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(p.s) {
		return nil, errBadValue
	}
	return n, nil
}

type jsonParser struct {
	s []byte
	i int
}

func (p *jsonParser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

const maxJSONDepth = 1000

func (p *jsonParser) value(depth int) (*jnode, error) {
	if depth > maxJSONDepth {
		return nil, errBadValue
	}
	p.space()
	if p.i >= len(p.s) {
		return nil, errBadValue
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		n := &jnode{typ: jbvObject}
		p.space()
		if p.i < len(p.s) && p.s[p.i] == '}' {
			p.i++
			return n, nil
		}
		for {
			p.space()
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.space()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, errBadValue
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.keys = append(n.keys, k)
			n.vals = append(n.vals, v)
			p.space()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return n, nil
			}
			return nil, errBadValue
		}
	case c == '[':
		p.i++
		n := &jnode{typ: jbvArray}
		p.space()
		if p.i < len(p.s) && p.s[p.i] == ']' {
			p.i++
			return n, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.elems = append(n.elems, v)
			p.space()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			if p.i < len(p.s) && p.s[p.i] == ']' {
				p.i++
				return n, nil
			}
			return nil, errBadValue
		}
	case c == '"':
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return &jnode{typ: jbvString, str: s}, nil
	case bytes.HasPrefix(p.s[p.i:], []byte("true")):
		p.i += 4
		return &jnode{typ: jbvBool, b: true}, nil
	case bytes.HasPrefix(p.s[p.i:], []byte("false")):
		p.i += 5
		return &jnode{typ: jbvBool}, nil
	case bytes.HasPrefix(p.s[p.i:], []byte("null")):
		p.i += 4
		return &jnode{typ: jbvNull}, nil
	default:
		j := p.i
		for j < len(p.s) && bytes.IndexByte([]byte("+-0123456789.eE"), p.s[j]) >= 0 {
			j++
		}
		d, err := parseDecimal(p.s[p.i:j])
		if err != nil || d.special != decFinite {
			return nil, errBadValue
		}
		p.i = j
		return &jnode{typ: jbvNumeric, num: d}, nil
	}
}

// str reads a JSON string and returns its unescaped bytes.
func (p *jsonParser) str() ([]byte, error) {
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return nil, errBadValue
	}
	p.i++
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != '"' && p.s[p.i] != '\\' {
		p.i++
	}
	if p.i < len(p.s) && p.s[p.i] == '"' {
		p.i++
		return p.s[start : p.i-1], nil
	}
	out := append([]byte(nil), p.s[start:p.i]...)
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return out, nil
		case c != '\\':
			out = append(out, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.s) {
			return nil, errBadValue
		}
		e := p.s[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return nil, errBadValue
			}
			if utf16.IsSurrogate(r) && p.i+1 < len(p.s) && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
				p.i += 2
				r2, ok := p.hex4()
				if !ok {
					return nil, errBadValue
				}
				r = utf16.DecodeRune(r, r2)
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, errBadValue
		}
	}
	return nil, errBadValue
}

func (p *jsonParser) hex4() (rune, bool) {
	if p.i+4 > len(p.s) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(p.s[p.i:p.i+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	p.i += 4
	return rune(n), true
}

// Iterator tokens (JsonbIteratorToken).
const (
	wjbDone = iota
	wjbKey
	wjbValue
	wjbElem
	wjbBeginArray
	wjbEndArray
	wjbBeginObject
	wjbEndObject
)

// jtok is one iterator step: the token and the value it reports.
type jtok struct {
	tok  int
	node *jnode // scalar, or the container for a begin token
	key  []byte // wjbKey
	raw  bool   // wjbBeginArray of a top-level scalar
}

// jiter walks a jsonb value as JsonbIteratorNext does with skipNested
// false: a top-level scalar is a one-element "raw scalar" array.
type jiter struct {
	stack []jframe
	done  bool
}

type jframe struct {
	n   *jnode
	i   int  // next element or pair
	key bool // object: the key of pair i was reported, its value is next
}

func newJIter(n *jnode) *jiter {
	it := &jiter{}
	if n.typ == jbvArray || n.typ == jbvObject {
		it.stack = []jframe{{n: n, i: -1}}
	} else {
		it.stack = []jframe{{n: &jnode{typ: jbvArray, elems: []*jnode{n}}, i: -2}}
	}
	return it
}

func (it *jiter) next() jtok {
	if len(it.stack) == 0 {
		return jtok{tok: wjbDone}
	}
	f := &it.stack[len(it.stack)-1]
	if f.i < 0 { // the container's begin token
		raw := f.i == -2
		f.i = 0
		if f.n.typ == jbvArray {
			return jtok{tok: wjbBeginArray, node: f.n, raw: raw}
		}
		return jtok{tok: wjbBeginObject, node: f.n}
	}
	if f.n.typ == jbvArray {
		if f.i >= len(f.n.elems) {
			it.stack = it.stack[:len(it.stack)-1]
			return jtok{tok: wjbEndArray}
		}
		e := f.n.elems[f.i]
		f.i++
		return it.child(e, wjbElem)
	}
	if f.i >= len(f.n.keys) {
		it.stack = it.stack[:len(it.stack)-1]
		return jtok{tok: wjbEndObject}
	}
	if !f.key {
		f.key = true
		return jtok{tok: wjbKey, key: f.n.keys[f.i], node: &jnode{typ: jbvString, str: f.n.keys[f.i]}}
	}
	v := f.n.vals[f.i]
	f.key = false
	f.i++
	return it.child(v, wjbValue)
}

// child reports a scalar element or value, or descends into a container.
func (it *jiter) child(n *jnode, tok int) jtok {
	if n.typ == jbvArray || n.typ == jbvObject {
		it.stack = append(it.stack, jframe{n: n, i: -1})
		return it.next()
	}
	return jtok{tok: tok, node: n}
}

// cmpJSONB is compareJsonbContainers.
func cmpJSONB(a, b *jnode) int {
	ia, ib := newJIter(a), newJIter(b)
	for {
		ta, tb := ia.next(), ib.next()
		var res int
		switch {
		case ta.tok == tb.tok:
			if ta.tok == wjbDone {
				return 0
			}
			if ta.tok == wjbEndArray || ta.tok == wjbEndObject {
				continue
			}
			va, vb := ta.node, tb.node
			if va.typ != vb.typ {
				res = signOf(va.typ > vb.typ)
				break
			}
			switch va.typ {
			case jbvString:
				res = bytes.Compare(va.str, vb.str)
			case jbvNumeric:
				res = cmpDecimal(va.num, vb.num)
			case jbvBool:
				if va.b != vb.b {
					res = signOf(va.b)
				}
			case jbvArray:
				if ta.raw != tb.raw {
					res = signOf(!ta.raw)
				}
				if len(va.elems) != len(vb.elems) {
					res = signOf(len(va.elems) > len(vb.elems))
				}
			case jbvObject:
				if len(va.keys) != len(vb.keys) {
					res = signOf(len(va.keys) > len(vb.keys))
				}
			}
		case ta.node == nil || tb.node == nil:
			// Unreachable for well-formed values (equal counts were checked
			// at the begin tokens); order by token to stay total.
			res = signOf(ta.tok > tb.tok)
		default:
			res = signOf(ta.node.typ > tb.node.typ)
		}
		if res != 0 {
			return res
		}
	}
}

// signOf returns 1 for true and -1 for false.
func signOf(gt bool) int {
	if gt {
		return 1
	}
	return -1
}
