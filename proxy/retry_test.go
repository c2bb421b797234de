package proxy

import "testing"

// A Query's answer is known to be complete at its first command tag only
// when its text holds one statement; anything that might hold more (a
// semicolon anywhere but at the end, even in a literal) answers false.
func TestOneStatementCountsOnlyTextsWithoutAnInnerSemicolon(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1\x00":                       true,
		"SELECT 1;\x00":                      true,
		"SELECT 1 ; \n\t;\x00":               true,
		"\x00":                               true, // an empty query: EmptyQueryResponse
		"SELECT 1; SELECT 2\x00":             false,
		"SELECT 1; SELECT 2;\x00":            false,
		"SELECT ';'\x00":                     false,
		"SELECT 1 -- ; a comment\n\x00":      false,
		"BEGIN; SELECT 1; COMMIT\x00":        false,
		"SELECT count(*) FROM items\r\n\x00": true,
	} {
		if got := oneStatement([]byte(q)); got != want {
			t.Errorf("oneStatement(%q) = %v, want %v", q, got, want)
		}
	}
}
