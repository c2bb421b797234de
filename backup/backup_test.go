package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

// TestWithTwoShards runs every scenario against one pair of real shards
// (starting Postgres is the slow part), one subtest after another.
func TestWithTwoShards(t *testing.T) {
	c := startCluster(t)

	t.Run("EveryProviderBacksUpListsAndRestoresIntoNewDatabases", func(t *testing.T) {
		for _, p := range []struct {
			name  string
			start func(*testing.T) config.Backup
		}{
			{"local", localConfig},
			{"s3", startVersityGW},
			{"gcs", startFakeGCS},
			{"azure", startAzurite},
		} {
			t.Run(p.name, func(t *testing.T) { c.roundTrip(t, p.start(t), "restored_"+p.name) })
		}
	})
	t.Run("ACorruptedObjectIsRefusedBeforeAnythingIsRestored", c.testCorruptObject)
	t.Run("AFailedBackupDeletesItsObjectsAndKeepsOlderBackups", c.testFailedBackup)
	t.Run("AShardThatFailsToRestoreIsRolledBack", c.testFailedRestore)
	t.Run("RetentionDeletesOnlyExpiredBackups", c.testRetention)
	t.Run("TwoSidecarsWithTheSameScheduleMakeOneBackupPerSlot", c.testTwoSidecars)
	t.Run("RestoreWithoutConfirmNeverTouchesTheLiveDatabase", c.testConfirm)
}

// dropOnCleanup drops database db on every shard when the test ends.
func (c *cluster) dropOnCleanup(t *testing.T, db string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, pg := range c.pgs {
			if _, err := pg.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+quoteIdent(db)+" WITH (FORCE)"); err != nil {
				t.Errorf("drop %s: %v", db, err)
			}
		}
	})
}

func (c *cluster) roundTrip(t *testing.T, cfg config.Backup, target string) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	m, _ := c.newManager(t, cfg, Deps{})
	c.dropOnCleanup(t, target)

	t0 := time.Now()
	man, err := m.Create(ctx)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Logf("%s: backup %s of %d bytes in %v", cfg.Provider, man.Name, man.TotalBytes, time.Since(t0).Round(time.Millisecond))
	if len(man.Shards) != 2 || man.Shards[0].Shard != "shard-a" || man.Shards[1].Shard != "shard-b" {
		t.Fatalf("manifest shards: %+v", man.Shards)
	}
	var total int64
	for _, s := range man.Shards {
		if s.Bytes <= 0 || len(s.SHA256) != 64 || !strings.HasPrefix(s.ServerVersion, "1") ||
			s.SchemaVersion != "d607e412e7b0" || s.Object != s.Shard+".dump" || s.FinishedAt.Before(s.StartedAt) {
			t.Errorf("shard manifest: %+v", s)
		}
		total += s.Bytes
	}
	if man.TotalBytes != total || man.Database != pgcluster.BrownieDatabase || man.SidecarVersion != "test" ||
		man.Trigger != "manual" || man.Format != FormatCustom || man.FinishedAt.Before(man.StartedAt) {
		t.Errorf("manifest: %+v", man)
	}

	list, err := m.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 1 || !sameManifest(list[0], *man) {
		t.Fatalf("List = %+v, want the one backup %+v", list, man)
	}
	got, err := m.Get(ctx, man.Name)
	if err != nil || !sameManifest(*got, *man) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := m.Get(ctx, "brownie-20000101T000000Z"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := m.Get(ctx, "../"+man.Name); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Get(traversal) = %v, want ErrInvalidName", err)
	}

	t0 = time.Now()
	res, err := m.Restore(ctx, RestoreRequest{BackupName: man.Name, TargetDatabase: target})
	if err != nil {
		t.Fatalf("Restore: %v (%+v)", err, res)
	}
	t.Logf("%s: restored into %s in %v", cfg.Provider, target, time.Since(t0).Round(time.Millisecond))
	if !res.OK || res.Database != target || res.BackupName != man.Name || len(res.Shards) != 2 || res.Duration <= 0 {
		t.Errorf("result: %+v", res)
	}
	for _, s := range res.Shards {
		if !s.OK || s.Error != "" || s.Duration <= 0 {
			t.Errorf("shard result: %+v", s)
		}
	}
	c.assertSameData(t, target)

	// The target exists now: a second restore into it is refused and leaves
	// it alone.
	if _, err := m.Restore(ctx, RestoreRequest{BackupName: man.Name, TargetDatabase: target}); !errors.Is(err, ErrExists) {
		t.Errorf("second Restore into %s = %v, want ErrExists", target, err)
	}
	c.assertSameData(t, target)

	st := m.Status()
	if st.Running || st.LastSuccess == nil || st.LastSuccess.Name != man.Name || st.LastFailure != "" || st.Provider != cfg.Provider {
		t.Errorf("Status = %+v", st)
	}
}

// sameManifest compares manifests read back from JSON with the original.
func sameManifest(a, b Manifest) bool {
	if a.Name != b.Name || a.TotalBytes != b.TotalBytes || !a.StartedAt.Equal(b.StartedAt) ||
		!a.FinishedAt.Equal(b.FinishedAt) || len(a.Shards) != len(b.Shards) {
		return false
	}
	for i := range a.Shards {
		x, y := a.Shards[i], b.Shards[i]
		if x.Shard != y.Shard || x.SHA256 != y.SHA256 || x.Bytes != y.Bytes || x.Object != y.Object {
			return false
		}
	}
	return true
}

func (c *cluster) testCorruptObject(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg := localConfig(t)
	m, _ := c.newManager(t, cfg, Deps{})
	man, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const target = "corrupt_target"
	c.dropOnCleanup(t, target)
	path := filepath.Join(cfg.Destination, man.Name, "shard-b.dump")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// A live database that differs from the backup: an in-place restore
	// that went ahead would remove this row.
	if _, err := c.pgs[0].Exec(ctx, pgcluster.BrownieDatabase,
		"INSERT INTO backup_probe (payload) VALUES ('written after the backup')"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := c.pgs[0].Exec(context.Background(), pgcluster.BrownieDatabase,
			"DELETE FROM backup_probe WHERE payload = 'written after the backup'"); err != nil {
			t.Error(err)
		}
	}()
	live := []string{fingerprint(t, c.pgs[0], pgcluster.BrownieDatabase), fingerprint(t, c.pgs[1], pgcluster.BrownieDatabase)}

	flipped := slices.Clone(orig)
	flipped[len(flipped)/2] ^= 0x01
	for _, tc := range []struct {
		name    string
		content []byte // nil removes the object
	}{
		{"one bit flipped", flipped},
		{"truncated", orig[:len(orig)-1]},
		{"missing", nil},
	} {
		if tc.content == nil {
			err = os.Remove(path)
		} else {
			err = os.WriteFile(path, tc.content, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, req := range []RestoreRequest{
			{BackupName: man.Name, TargetDatabase: target},
			{BackupName: man.Name, Confirm: man.Name},
		} {
			res, err := m.Restore(ctx, req)
			if !errors.Is(err, ErrCorrupt) || res != nil {
				t.Errorf("%s: Restore(%+v) = %+v, %v; want ErrCorrupt and no result", tc.name, req, res, err)
			}
			for i, pg := range c.pgs {
				if databaseExists(t, pg, target) {
					t.Errorf("%s: %s was created on %s", tc.name, target, c.shards[i].Name)
				}
				if got := fingerprint(t, pg, pgcluster.BrownieDatabase); got != live[i] {
					t.Errorf("%s: live database of %s changed:\n%s\nwant:\n%s", tc.name, c.shards[i].Name, got, live[i])
				}
			}
		}
	}
	if got := testutil.ToFloat64(m.metrics.restores.WithLabelValues("failed")); got != 6 {
		t.Errorf("failed restores metric = %v, want 6", got)
	}
}

func (c *cluster) testFailedBackup(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	clk := &clock{t: time.Date(2030, 1, 1, 2, 0, 0, 0, time.UTC)}
	var mu sync.Mutex
	shards := c.shards
	cfg := localConfig(t)
	m, _ := c.newManager(t, cfg, Deps{Now: clk.Now, Shards: func() []Shard {
		mu.Lock()
		defer mu.Unlock()
		return shards
	}})
	first, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// shard-b's primary moves to a port where nothing listens.
	mu.Lock()
	shards = []Shard{c.shards[0], {Name: "shard-b", Host: "127.0.0.1", Port: freePort(t)}}
	mu.Unlock()
	clk.Set(clk.Now().Add(time.Hour))
	failed := Name(clk.Now())
	if _, err := m.Create(ctx); err == nil || !strings.Contains(err.Error(), "shard-b") || errors.Is(err, ErrBusy) {
		t.Fatalf("Create with shard-b down = %v, want an error about shard-b", err)
	} else if strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatalf("error shows key material: %v", err)
	}

	list, err := m.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != first.Name {
		t.Fatalf("List = %+v, %v; want only %s", list, err, first.Name)
	}
	if entries, err := os.ReadDir(filepath.Join(cfg.Destination, failed)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("objects of the failed backup remain: %v, %v", entries, err)
	}
	st := m.Status()
	if st.LastFailure == "" || st.LastFailureAt == nil || !st.LastFailureAt.Equal(clk.Now()) ||
		st.LastSuccess == nil || st.LastSuccess.Name != first.Name || st.Running {
		t.Errorf("Status = %+v", st)
	}
	if got := testutil.ToFloat64(m.metrics.failures); got != 1 {
		t.Errorf("failures metric = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.metrics.created); got != 1 {
		t.Errorf("created metric = %v, want 1", got)
	}
}

func (c *cluster) testRetention(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	t0 := time.Date(2030, 6, 1, 2, 0, 0, 0, time.UTC)
	clk := &clock{}
	cfg := localConfig(t)
	cfg.RetentionDays = 30
	m, _ := c.newManager(t, cfg, Deps{Now: clk.Now})
	bucket := openLocalBucket(t, cfg.Destination)
	day := 24 * time.Hour

	create := func(at time.Time) string {
		t.Helper()
		clk.Set(at)
		man, err := m.Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return man.Name
	}
	expired := create(t0.Add(-40 * day))
	kept := create(t0.Add(-10 * day))
	write := func(key string) {
		t.Helper()
		if err := bucket.WriteAll(ctx, key, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	oldIncomplete := Name(t0.Add(-2 * day))
	freshIncomplete := Name(t0.Add(-time.Hour))
	write(oldIncomplete + "/shard-a.dump")
	write(freshIncomplete + "/shard-a.dump")
	others := []string{"notes.txt", "other/brownie-20000101T000000Z/manifest.json", "brownie-manual/x.dump"}
	for _, k := range others {
		write(k)
	}
	newest := create(t0)

	names := localBackupNames(t, cfg.Destination)
	slices.Sort(names)
	want := []string{kept, freshIncomplete, newest}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("backups after retention = %v, want %v (deleted: %s, %s)", names, want, expired, oldIncomplete)
	}
	for _, k := range others {
		if ok, err := bucket.Exists(ctx, k); !ok || err != nil {
			t.Errorf("retention touched %s: exists=%v err=%v", k, ok, err)
		}
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != newest || list[1].Name != kept {
		t.Errorf("List = %+v, %v; want %s then %s", list, err, newest, kept)
	}
	if got := testutil.ToFloat64(m.metrics.retentionDelete); got != 2 {
		t.Errorf("retention metric = %v, want 2", got)
	}
}

func (c *cluster) testTwoSidecars(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	key := 5000 + lockKeys.Add(1)
	cfg := localConfig(t)
	a, _ := c.newManager(t, cfg, Deps{LockKey: key})
	b, _ := c.newManager(t, cfg, Deps{LockKey: key})
	created := func(ms ...*Manager) (n float64) {
		for _, m := range ms {
			n += testutil.ToFloat64(m.metrics.scheduledRuns.WithLabelValues(RunCreated))
		}
		return n
	}
	skipped := func(ms ...*Manager) (n float64) {
		for _, m := range ms {
			n += testutil.ToFloat64(m.metrics.scheduledRuns.WithLabelValues(RunSkippedLocked)) +
				testutil.ToFloat64(m.metrics.scheduledRuns.WithLabelValues(RunSkippedExists))
		}
		return n
	}

	// At the same moment: one takes the lock, the other skips.
	slot := time.Date(2030, 1, 1, 2, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	mans := make([]*Manifest, 2)
	errs := make([]error, 2)
	for i, m := range []*Manager{a, b} {
		wg.Go(func() { mans[i], errs[i] = m.RunScheduled(ctx, slot) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || (mans[0] == nil) == (mans[1] == nil) {
		t.Fatalf("concurrent RunScheduled = %v, %v / %v, %v; want one backup", mans[0], errs[0], mans[1], errs[1])
	}
	if created(a, b) != 1 || skipped(a, b) != 1 {
		t.Errorf("created %v, skipped %v; want 1 and 1", created(a, b), skipped(a, b))
	}

	// One after the other, the lock long released: the second sees the
	// slot's backup and skips.
	slot2 := slot.Add(24 * time.Hour)
	if man, err := a.RunScheduled(ctx, slot2); err != nil || man == nil || man.Name != Name(slot2) || man.Trigger != "scheduled" {
		t.Fatalf("a.RunScheduled = %+v, %v", man, err)
	}
	if man, err := b.RunScheduled(ctx, slot2); err != nil || man != nil {
		t.Fatalf("b.RunScheduled of a done slot = %+v, %v; want a skip", man, err)
	}
	if got := testutil.ToFloat64(b.metrics.scheduledRuns.WithLabelValues(RunSkippedExists)); got < 1 {
		t.Errorf("b skipped_exists = %v", got)
	}
	list, err := a.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v; want 2 backups", list, err)
	}

	// Through Run on the real clock, a slot every 2 s.
	cfg2 := localConfig(t)
	cfg2.Schedule = "*/2 * * * * *"
	a2, _ := c.newManager(t, cfg2, Deps{LockKey: key})
	b2, _ := c.newManager(t, cfg2, Deps{LockKey: key})
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	runErrs := make(chan error, 2)
	for _, m := range []*Manager{a2, b2} {
		go func() { runErrs <- m.Run(rctx) }()
	}
	// Stop once both sidecars have handled two slots. On a busy machine a
	// backup can outlast the 2 s between slots, so a later slot may have
	// begun by then: the cancel cuts each sidecar's run of it short, and
	// counts it as failed. The slots handled before the cancel must not
	// have failed.
	failures := func() float64 {
		return testutil.ToFloat64(a2.metrics.failures) + testutil.ToFloat64(b2.metrics.failures)
	}
	deadline := time.Now().Add(30 * time.Second)
	for created(a2, b2)+skipped(a2, b2) < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	failedBefore := failures()
	rcancel()
	for range 2 {
		if err := <-runErrs; err != nil {
			t.Errorf("Run = %v", err)
		}
	}
	list, err = a2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) < 2 || float64(len(list)) != created(a2, b2) || skipped(a2, b2) < 2 || failedBefore != 0 {
		t.Errorf("Run made %d backups %v; created %v, skipped %v, failed %v before the cancel; want one per slot",
			len(list), names(list), created(a2, b2), skipped(a2, b2), failedBefore)
	}
	if cut := failures() - failedBefore; cut > 2 {
		t.Errorf("%v runs failed after the cancel; only each sidecar's run of the slot then begun may", cut)
	}
	for _, man := range list {
		if tm, ok := ParseName(man.Name); !ok || tm.Second()%2 != 0 || man.Trigger != "scheduled" {
			t.Errorf("scheduled backup %s is not named after a slot", man.Name)
		}
	}
}

func names(list []Manifest) []string {
	out := make([]string, len(list))
	for i, m := range list {
		out[i] = m.Name
	}
	return out
}

func (c *cluster) testConfirm(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	m, _ := c.newManager(t, localConfig(t), Deps{})
	atBackup := []string{fingerprint(t, c.pgs[0], pgcluster.BrownieDatabase), fingerprint(t, c.pgs[1], pgcluster.BrownieDatabase)}
	man, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, pg := range c.pgs {
		if _, err := pg.Exec(ctx, pgcluster.BrownieDatabase, fmt.Sprintf(
			"INSERT INTO backup_probe (payload) VALUES ('after the backup on %s'); UPDATE organizations SET name = name || ' (renamed)'",
			c.shards[i].Name)); err != nil {
			t.Fatal(err)
		}
	}
	live := []string{fingerprint(t, c.pgs[0], pgcluster.BrownieDatabase), fingerprint(t, c.pgs[1], pgcluster.BrownieDatabase)}

	for _, req := range []RestoreRequest{
		{BackupName: man.Name},
		{BackupName: man.Name, Confirm: "yes"},
		{BackupName: man.Name, Confirm: strings.ToUpper(man.Name)},
	} {
		if res, err := m.Restore(ctx, req); !errors.Is(err, ErrConfirmRequired) || res != nil {
			t.Errorf("Restore(%+v) = %+v, %v; want ErrConfirmRequired", req, res, err)
		}
	}
	if _, err := m.Restore(ctx, RestoreRequest{BackupName: "brownie-20000101T000000Z", Confirm: "brownie-20000101T000000Z"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Restore(unknown) = %v, want ErrNotFound", err)
	}
	for i, pg := range c.pgs {
		if got := fingerprint(t, pg, pgcluster.BrownieDatabase); got != live[i] {
			t.Errorf("live database of %s changed without confirm", c.shards[i].Name)
		}
	}

	// With the confirmation, the live database goes back to the backup.
	res, err := m.Restore(ctx, RestoreRequest{BackupName: man.Name, Confirm: man.Name})
	if err != nil || !res.OK || res.Database != pgcluster.BrownieDatabase {
		t.Fatalf("in-place Restore = %+v, %v", res, err)
	}
	for i, pg := range c.pgs {
		if got := fingerprint(t, pg, pgcluster.BrownieDatabase); got != atBackup[i] {
			t.Errorf("%s after in-place restore:\n%s\nwant:\n%s", c.shards[i].Name, got, atBackup[i])
		}
	}
}

// failingRestoreTools makes a BACKUP_PG_BIN_DIR whose pg_restore gives the
// real one only the first 20,000 bytes of its input when it restores into
// port, so that it fails half-way, after it has changed the database.
func failingRestoreTools(t *testing.T, port int) string {
	t.Helper()
	dir := t.TempDir()
	var real [2]string
	for i, tool := range []string{"pg_dump", "pg_restore"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		real[i] = p
	}
	if err := os.Symlink(real[0], filepath.Join(dir, "pg_dump")); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
case "$*" in
*"port=%d "*) /usr/bin/head -c 20000 | %q "$@"; exit $? ;;
esac
exec %q "$@"
`, port, real[1], real[1])
	if err := os.WriteFile(filepath.Join(dir, "pg_restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (c *cluster) testFailedRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg := localConfig(t)
	cfg.PGBinDir = failingRestoreTools(t, c.shards[1].Port)
	cfg.Concurrency = 1 // shard-a, then shard-b
	m, _ := c.newManager(t, cfg, Deps{})
	man, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Into new databases: shard-b fails, and neither database remains.
	const target = "failed_target"
	c.dropOnCleanup(t, target)
	res, err := m.Restore(ctx, RestoreRequest{BackupName: man.Name, TargetDatabase: target})
	if err == nil || res == nil || res.OK || len(res.Shards) != 2 || res.Shards[1].OK ||
		!strings.Contains(res.Shards[1].Error, "pg_restore") || !strings.Contains(err.Error(), "shard-b") {
		t.Fatalf("Restore with a failing shard = %+v, %v", res, err)
	}
	for i, pg := range c.pgs {
		if databaseExists(t, pg, target) {
			t.Errorf("%s remains on %s after the failed restore", target, c.shards[i].Name)
		}
	}

	// In place: shard-b's transaction rolls back, leaving its live database
	// as it was; shard-a, restored first, stays restored and says so.
	marker := "INSERT INTO backup_probe (payload) VALUES ('after the backup')"
	for _, pg := range c.pgs {
		if _, err := pg.Exec(ctx, pgcluster.BrownieDatabase, marker); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		if _, err := c.pgs[1].Exec(context.Background(), pgcluster.BrownieDatabase,
			"DELETE FROM backup_probe WHERE payload = 'after the backup'"); err != nil {
			t.Error(err)
		}
	}()
	before := fingerprint(t, c.pgs[1], pgcluster.BrownieDatabase)
	res, err = m.Restore(ctx, RestoreRequest{BackupName: man.Name, Confirm: man.Name})
	if err == nil || res == nil || res.OK || !res.Shards[0].OK || res.Shards[1].OK {
		t.Fatalf("in-place Restore with a failing shard = %+v, %v", res, err)
	}
	if got := fingerprint(t, c.pgs[1], pgcluster.BrownieDatabase); got != before {
		t.Errorf("shard-b changed by a failed in-place restore:\n%s\nwant:\n%s", got, before)
	}
	if out, err := c.pgs[0].Exec(ctx, pgcluster.BrownieDatabase,
		"SELECT count(*) FROM backup_probe WHERE payload = 'after the backup'"); err != nil || out != "0" {
		t.Errorf("shard-a was not restored: %q, %v", out, err)
	}
}
