package twophase

import (
	"regexp"
	"testing"
)

func TestNewGIDNamesItsAnchorAndIsFreshEachTime(t *testing.T) {
	shape := regexp.MustCompile(`^brownie:[0-9a-f]{24}:shard-1$`)
	seen := map[string]bool{}
	for range 100 {
		gid := NewGID("shard-1")
		if !shape.MatchString(gid) {
			t.Fatalf("NewGID(shard-1) = %q, want brownie:<24 hex digits>:shard-1", gid)
		}
		if seen[gid] {
			t.Fatalf("NewGID returned %q twice", gid)
		}
		seen[gid] = true
		if a, ok := Anchor(gid); !ok || a != "shard-1" {
			t.Fatalf("Anchor(%q) = %q, %v; want shard-1, true", gid, a, ok)
		}
	}
}

func TestAnchorReadsOnlyIdentifiersTheSidecarMade(t *testing.T) {
	for _, tc := range []struct {
		gid, anchor string
		ok          bool
	}{
		{"brownie:0123456789abcdef01234567:shard-0", "shard-0", true},
		{"brownie:01:shard-0", "shard-0", true},
		{"brownie:01:eu:shard:2", "eu:shard:2", true}, // a shard name may hold colons
		{"brownie::shard-0", "shard-0", true},
		{"brownie:01:", "", false},
		{"brownie:01", "", false},
		{"brownie:", "", false},
		{"other:01:shard-0", "", false},
		{"Brownie:01:shard-0", "", false},
		{"", "", false},
	} {
		a, ok := Anchor(tc.gid)
		if a != tc.anchor || ok != tc.ok {
			t.Errorf("Anchor(%q) = %q, %v; want %q, %v", tc.gid, a, ok, tc.anchor, tc.ok)
		}
	}
}

func TestStatementsQuoteTheIdentifierAsALiteral(t *testing.T) {
	const gid = "brownie:01:shard-0"
	for _, tc := range []struct{ got, want string }{
		{PrepareAnchor(gid), "INSERT INTO brownie_sidecar.commit_log (gid) VALUES ('brownie:01:shard-0'); PREPARE TRANSACTION 'brownie:01:shard-0'"},
		{Prepare(gid), "PREPARE TRANSACTION 'brownie:01:shard-0'"},
		{CommitPrepared(gid), "COMMIT PREPARED 'brownie:01:shard-0'"},
		{RollbackPrepared(gid), "ROLLBACK PREPARED 'brownie:01:shard-0'"},
		// A shard name is configuration, not a client's text, but is quoted all the same.
		{CommitPrepared(`brownie:01:it's\x`), `COMMIT PREPARED E'brownie:01:it''s\\x'`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
}

func TestQuoteLiteralQuotesForEitherStringSyntax(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "''"},
		{"brownie:01:shard-0", "'brownie:01:shard-0'"},
		{"it's", "'it''s'"},
		{"''", "''''''"},
		{`a\b`, `E'a\\b'`},
		{`\`, `E'\\'`},
		{`it's a \ path`, `E'it''s a \\ path'`},
		{`\'; DROP TABLE x; --`, `E'\\''; DROP TABLE x; --'`},
	} {
		if got := quoteLiteral(tc.in); got != tc.want {
			t.Errorf("quoteLiteral(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
