package backup

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Object names: under the destination's prefix each backup is a
// "directory" named after its start time (or its slot) holding one
// <shard>.dump per shard and the manifest, written last.
const (
	namePrefix = "brownie-"
	nameLayout = "20060102T150405Z"
	// ManifestFile is the manifest's object name inside a backup.
	ManifestFile = "manifest.json"
	// DumpSuffix ends every shard object's name.
	DumpSuffix = ".dump"
	// FormatCustom is Manifest.Format for pg_dump --format=custom objects.
	FormatCustom = "pg_dump-custom"
)

// The patterns are compiled at their first use, not when the sidecar
// starts: compiled patterns stay on the heap.
var (
	nameRE  = lazyRegexp(`^brownie-[0-9]{8}T[0-9]{6}Z$`)
	shardRE = lazyRegexp(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$`)
	// dbNameRE is what a restore's TargetDatabase may be: a plain
	// identifier, quoted anyway.
	dbNameRE = lazyRegexp(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)
)

// lazyRegexp returns a function that compiles expr on its first call and
// returns the same *regexp.Regexp on every call. Safe for concurrent use.
func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// Name names the backup started (or scheduled) at t.
func Name(t time.Time) string { return namePrefix + t.UTC().Format(nameLayout) }

// ParseName parses a backup name; ok is false for anything that is not
// one.
func ParseName(name string) (t time.Time, ok bool) {
	if !nameRE().MatchString(name) {
		return time.Time{}, false
	}
	t, err := time.Parse(nameLayout, strings.TrimPrefix(name, namePrefix))
	return t, err == nil
}

// ValidShardName reports whether a shard name can name a backup object:
// letters, digits, '.', '_' and '-', not starting with '.' or '-'.
func ValidShardName(s string) bool { return shardRE().MatchString(s) }

// ValidDatabaseName reports whether s may be a restore's target database.
func ValidDatabaseName(s string) bool { return dbNameRE().MatchString(s) }

// CheckManifest rejects a manifest that does not describe backup name or
// whose object names could leave the backup's directory.
func CheckManifest(name string, man *Manifest) error {
	if man.Name != name {
		return fmt.Errorf("names backup %q", man.Name)
	}
	if len(man.Shards) == 0 {
		return errors.New("lists no shard")
	}
	seen := map[string]bool{}
	for _, s := range man.Shards {
		if !shardRE().MatchString(s.Shard) || s.Object != s.Shard+DumpSuffix || seen[s.Shard] {
			return fmt.Errorf("shard entry %q/%q is invalid", s.Shard, s.Object)
		}
		seen[s.Shard] = true
		if len(s.SHA256) != sha256.Size*2 || s.Bytes < 0 {
			return fmt.Errorf("shard %q has an invalid size or checksum", s.Shard)
		}
	}
	return nil
}

// CheckRestoreRequest checks a restore request before anything is touched
// and returns the database it restores into (liveDatabase in place):
// ErrInvalidName for a malformed backup or database name,
// ErrConfirmRequired for an in-place restore without a matching Confirm,
// ErrExists for a target that is the live database.
func CheckRestoreRequest(req RestoreRequest, liveDatabase string) (db string, inPlace bool, err error) {
	if _, ok := ParseName(req.BackupName); !ok {
		return "", false, fmt.Errorf("%w: backup_name must look like brownie-20060102T150405Z", ErrInvalidName)
	}
	if req.TargetDatabase == "" {
		if req.Confirm != req.BackupName {
			return "", false, ErrConfirmRequired
		}
		return liveDatabase, true, nil
	}
	db = req.TargetDatabase
	if !ValidDatabaseName(db) {
		return "", false, fmt.Errorf("%w: target_database must be a letter or underscore followed by up to 62 letters, digits or underscores", ErrInvalidName)
	}
	if db == liveDatabase {
		return "", false, fmt.Errorf("target database %s is the live database (%w); leave target_database empty and confirm to restore in place", db, ErrExists)
	}
	return db, false, nil
}
