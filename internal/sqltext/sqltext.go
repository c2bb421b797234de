// Package sqltext reads what PostgreSQL's scanner skips between tokens of
// a statement text: whitespace and comments. It lets the sidecar find a
// statement's first word, or its leading comments, without the parser.
package sqltext

import "strings"

// IsSpace reports whether c is whitespace to PostgreSQL's scanner.
func IsSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// Comment reads the comment starting at sql[i]: a -- comment to the end
// of its line, or a /* */ comment, which nests. It returns the comment's
// body without its delimiters and the offset just after it; ok is false
// when no comment starts at i. An unclosed /* */ comment runs to the end
// of sql and is reported with closed false (the server rejects the text).
func Comment(sql string, i int) (body string, end int, ok, closed bool) {
	rest := sql[i:]
	switch {
	case strings.HasPrefix(rest, "--"):
		j := strings.IndexAny(rest, "\r\n")
		if j < 0 {
			j = len(rest)
		}
		return rest[2:j], i + j, true, true
	case strings.HasPrefix(rest, "/*"):
		depth, j := 1, 2
		for j < len(rest) && depth > 0 {
			switch {
			case strings.HasPrefix(rest[j:], "/*"):
				depth++
				j += 2
			case strings.HasPrefix(rest[j:], "*/"):
				depth--
				j += 2
			default:
				j++
			}
		}
		if depth > 0 {
			return rest[2:], len(sql), true, false
		}
		return rest[2 : j-2], i + j, true, true
	}
	return "", i, false, false
}

// SkipSpace returns the offset of the first byte at or after i that is
// neither whitespace nor part of a comment: len(sql) when there is none.
func SkipSpace(sql string, i int) int {
	for i < len(sql) {
		if IsSpace(sql[i]) {
			i++
			continue
		}
		_, end, ok, _ := Comment(sql, i)
		if !ok {
			return i
		}
		i = end
	}
	return i
}
