package sqltext

import "testing"

func TestCommentReadsBothKindsAndNesting(t *testing.T) {
	for _, c := range []struct {
		sql        string
		at         int
		body       string
		end        int
		ok, closed bool
	}{
		{"-- note\nSELECT", 0, " note", 7, true, true},
		{"-- note\rSELECT", 0, " note", 7, true, true},
		{"-- to the end", 0, " to the end", 13, true, true},
		{"/* a /* b */ c */x", 0, " a /* b */ c ", 17, true, true},
		{"x/**/y", 1, "", 5, true, true},
		{"/* open /* */", 0, " open /* */", 13, true, false},
		{"/ * no", 0, "", 0, false, false},
		{"- - no", 0, "", 0, false, false},
		{"SELECT", 0, "", 0, false, false},
	} {
		body, end, ok, closed := Comment(c.sql, c.at)
		if body != c.body || end != c.end || ok != c.ok || closed != c.closed {
			t.Errorf("Comment(%q, %d) = %q, %d, %v, %v; want %q, %d, %v, %v", c.sql, c.at, body, end, ok, closed, c.body, c.end, c.ok, c.closed)
		}
	}
}

func TestSkipSpaceStopsAtTheFirstToken(t *testing.T) {
	for _, c := range []struct {
		sql  string
		want int
	}{
		{"BEGIN", 0},
		{" \t\r\n\f\vBEGIN", 6},
		{"/* x */ -- y\n BEGIN", 14},
		{"/* unclosed BEGIN", 17},
		{"   ", 3},
		{";BEGIN", 0},
		{"", 0},
	} {
		if got := SkipSpace(c.sql, 0); got != c.want {
			t.Errorf("SkipSpace(%q) = %d, want %d", c.sql, got, c.want)
		}
	}
}
