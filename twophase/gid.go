package twophase

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
)

// gidPrefix starts the identifier of every transaction the sidecar
// prepares: "brownie:<random hex>:<anchor shard>". The recovery's scan
// matches it (LIKE 'brownie:%').
const gidPrefix = "brownie:"

// NewGID returns a fresh transaction identifier naming the anchor shard:
// "brownie:<24 random hex digits>:<anchor>". Safe for concurrent use.
func NewGID(anchor string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return gidPrefix + hex.EncodeToString(b[:]) + ":" + anchor
}

// Anchor returns the anchor shard named in a transaction identifier made
// by NewGID; ok is false when gid is not one (no "brownie:" prefix, no
// second colon, or an empty shard name).
func Anchor(gid string) (shard string, ok bool) {
	rest, ok := strings.CutPrefix(gid, gidPrefix)
	if !ok {
		return "", false
	}
	_, anchor, ok := strings.Cut(rest, ":")
	return anchor, ok && anchor != ""
}

// PrepareAnchor returns the anchor's phase-1 statement: it inserts the
// write's decision row into brownie_sidecar.commit_log and prepares the
// anchor's part, in one simple query.
func PrepareAnchor(gid string) string {
	g := quoteLiteral(gid)
	return "INSERT INTO brownie_sidecar.commit_log (gid) VALUES (" + g + "); PREPARE TRANSACTION " + g
}

// Prepare returns the phase-1 statement of a leg other than the anchor.
func Prepare(gid string) string { return "PREPARE TRANSACTION " + quoteLiteral(gid) }

// CommitPrepared returns the statement that commits a prepared part; on
// the anchor it is the decision.
func CommitPrepared(gid string) string { return "COMMIT PREPARED " + quoteLiteral(gid) }

// RollbackPrepared returns the statement that rolls back a prepared part.
func RollbackPrepared(gid string) string { return "ROLLBACK PREPARED " + quoteLiteral(gid) }

// quoteLiteral quotes s as an SQL string literal, valid whatever
// standard_conforming_strings says: with a backslash in s it becomes an
// escape string (E'…'). The same quoting as package proxy's.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return "E'" + strings.ReplaceAll(s, `\`, `\\`) + "'"
	}
	return "'" + s + "'"
}
