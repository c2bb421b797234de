package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

// restorePromise is the original product's promise for a local restore.
const restorePromise = 5 * time.Minute

// benchSettings make the benchmark's servers durable, as in production
// (pgcluster's test defaults turn fsync off), with room for bulk loads.
var benchSettings = map[string]string{
	"fsync":                "on",
	"synchronous_commit":   "on",
	"full_page_writes":     "on",
	"shared_buffers":       "256MB",
	"maintenance_work_mem": "256MB",
	"max_wal_size":         "4GB",
	"checkpoint_timeout":   "15min",
}

// BenchmarkBackupRestore generates a Brownie dataset of BACKUP_BENCH_MB
// megabytes (default 1024, table and index size on disk) over two shards,
// then, per iteration, backs it up to a local directory and restores it
// into a new database on each shard. It prints the throughput of both and
// the restore time against the 5-minute promise. `make bench-backup` runs
// it once; try BACKUP_BENCH_MB=50 first.
func BenchmarkBackupRestore(b *testing.B) {
	sizeMB := 1024
	if v := os.Getenv("BACKUP_BENCH_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("BACKUP_BENCH_MB=%q is not a positive number of megabytes", v)
		}
		sizeMB = n
	}
	c := startClusterWith(b, benchSettings, false)
	t0 := time.Now()
	c.generate(b, int64(sizeMB)<<20)
	dataBytes := c.databaseBytes(b, pgcluster.BrownieDatabase)
	b.Logf("generated %s over 2 shards in %v (databases: %s)", mb(int64(sizeMB)<<20), time.Since(t0).Round(time.Second), mb(dataBytes))

	dir, err := os.MkdirTemp("", "backup-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	dest := filepath.Join(dir, "backups")
	m, _ := c.newManager(b, config.Backup{Provider: config.BackupLocal, Destination: dest, Timeout: time.Hour}, Deps{})

	ctx := b.Context()
	var backupTime, restoreTime, verifyTime time.Duration
	var dumpBytes int64
	iter := 0
	for b.Loop() {
		iter++
		t0 := time.Now()
		man, err := m.Create(ctx)
		if err != nil {
			b.Fatalf("Create: %v", err)
		}
		backupTime += time.Since(t0)
		dumpBytes = man.TotalBytes

		t0 = time.Now()
		verifyLocal(b, dest, man)
		verifyTime += time.Since(t0)

		target := fmt.Sprintf("bench_restore_%d", iter)
		t0 = time.Now()
		res, err := m.Restore(ctx, RestoreRequest{BackupName: man.Name, TargetDatabase: target})
		if err != nil {
			b.Fatalf("Restore: %v %+v", err, res)
		}
		restoreTime += time.Since(t0)

		b.StopTimer()
		c.assertSameCounts(b, target)
		for _, pg := range c.pgs {
			if _, err := pg.Exec(ctx, "postgres", "DROP DATABASE "+quoteIdent(target)); err != nil {
				b.Fatal(err)
			}
		}
		// A new backup name needs a new second.
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
		b.StartTimer()
	}
	n := time.Duration(iter)
	backupTime, restoreTime, verifyTime = backupTime/n, restoreTime/n, verifyTime/n
	perSec := func(bytes int64, d time.Duration) float64 { return float64(bytes) / (1 << 20) / d.Seconds() }
	b.ReportMetric(perSec(dataBytes, backupTime), "backup_MB/s")
	b.ReportMetric(perSec(dataBytes, restoreTime), "restore_MB/s")
	b.ReportMetric(restoreTime.Seconds(), "restore_s")

	verdict := "kept"
	if restoreTime >= restorePromise {
		verdict = "BROKEN"
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nBackup and restore of a generated Brownie dataset, 2 shards, local storage, %d iteration(s)\n\n", iter)
	fmt.Fprintf(&out, "| measure | value |\n|---|---|\n")
	fmt.Fprintf(&out, "| dataset (tables and indexes on disk, both shards) | %s |\n", mb(dataBytes))
	fmt.Fprintf(&out, "| backup objects (pg_dump custom, compressed) | %s |\n", mb(dumpBytes))
	fmt.Fprintf(&out, "| backup time | %v |\n", backupTime.Round(time.Millisecond))
	fmt.Fprintf(&out, "| backup throughput (dataset / time) | %.1f MB/s |\n", perSec(dataBytes, backupTime))
	fmt.Fprintf(&out, "| checksum verification alone | %v (%.0f MB/s of objects) |\n", verifyTime.Round(time.Millisecond), perSec(dumpBytes, verifyTime))
	fmt.Fprintf(&out, "| restore time (verification + pg_restore, new databases) | %v |\n", restoreTime.Round(time.Millisecond))
	fmt.Fprintf(&out, "| restore throughput (dataset / time) | %.1f MB/s |\n", perSec(dataBytes, restoreTime))
	fmt.Fprintf(&out, "| promise: local restore under %v | %s (%.0f%% of the budget) |\n", restorePromise, verdict, 100*restoreTime.Seconds()/restorePromise.Seconds())
	fmt.Print(out.String())
}

// verifyLocal reads every object of a local backup and checks its SHA-256,
// as a restore does before anything is touched.
func verifyLocal(tb testing.TB, dest string, man *Manifest) {
	tb.Helper()
	for _, sm := range man.Shards {
		f, err := os.Open(filepath.Join(dest, man.Name, sm.Object))
		if err != nil {
			tb.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		_ = f.Close()
		if err != nil || hex.EncodeToString(h.Sum(nil)) != sm.SHA256 {
			tb.Fatalf("object %s does not match its manifest (%v)", sm.Object, err)
		}
	}
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }

// tableBytesSQL is the size of the public tables with their indexes and
// TOAST.
const tableBytesSQL = `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace`

// databaseBytes is the size of the public tables of db over the shards.
func (c *cluster) databaseBytes(tb testing.TB, db string) int64 {
	var total int64
	for _, pg := range c.pgs {
		out, err := pg.Exec(tb.Context(), db, tableBytesSQL)
		if err != nil {
			tb.Fatal(err)
		}
		n, err := strconv.ParseInt(out, 10, 64)
		if err != nil {
			tb.Fatalf("size %q: %v", out, err)
		}
		total += n
	}
	return total
}

// generate fills both shards, concurrently, batch by batch until each
// holds half of total bytes of tables and indexes.
func (c *cluster) generate(tb testing.TB, total int64) {
	var wg sync.WaitGroup
	errs := make([]error, len(c.pgs))
	for i, pg := range c.pgs {
		wg.Go(func() {
			errs[i] = generateShard(tb.Context(), pg, c.shards[i].Name, total/int64(len(c.pgs)))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
}

func generateShard(ctx context.Context, pg *pgcluster.Cluster, shard string, target int64) error {
	for batch := 0; ; batch++ {
		out, err := pg.Exec(ctx, pgcluster.BrownieDatabase, tableBytesSQL)
		if err != nil {
			return err
		}
		if n, _ := strconv.ParseInt(out, 10, 64); n >= target {
			_, err := pg.Exec(ctx, pgcluster.BrownieDatabase, "VACUUM ANALYZE")
			return err
		}
		if _, err := pg.Exec(ctx, pgcluster.BrownieDatabase, batchSQL(shard, batch)); err != nil {
			return fmt.Errorf("%s batch %d: %w", shard, batch, err)
		}
	}
}

// batchSQL inserts one batch of Brownie-like data (about 25 MB with
// indexes): 10 organizations, each with 5 teams of 20 users, 200 incidents
// and 10 configurations per team, 2 agent configurations per team and
// 2,000 metric points per organization. Incident descriptions are random
// word sequences of varying length with hashes, configurations YAML with
// hashes, so that the data compresses about as well as real text.
func batchSQL(shard string, batch int) string {
	key := fmt.Sprintf("%s/%d", shard, batch)
	return strings.NewReplacer("KEY", key).Replace(`
SET ROLE "brownie-fastapi-server";
INSERT INTO organizations (id, name, slug, description, is_active, config_json, settings, max_teams, max_users_per_team)
SELECT md5('KEY org ' || o)::uuid, 'Organization KEY ' || o, 'org-KEY-' || o, 'Organization ' || o || ' of batch KEY',
       true, json_build_object('plan', 'enterprise', 'seats', o * 10), '{"sso":true}', 50, 500
FROM generate_series(1, 10) o;
INSERT INTO teams (id, org_id, name, slug, description, is_active, organization_id, permissions, settings)
SELECT md5('KEY team ' || o || '/' || t)::uuid, md5('KEY org ' || o)::uuid, 'Team ' || t, 'team-' || t,
       'Team ' || t || ' handles the on-call rotation for service ' || md5(o || '/' || t), true,
       md5('KEY org ' || o)::uuid, '["incidents:read","incidents:write","configs:read"]', '{"timezone":"UTC"}'
FROM generate_series(1, 10) o, generate_series(1, 5) t;
INSERT INTO users (id, org_id, email, username, full_name, is_active, is_verified, oidc_subject, oidc_provider,
                   team_id, role, organization_id, preferences)
SELECT md5('KEY user ' || o || '/' || t || '/' || u)::uuid, md5('KEY org ' || o)::uuid,
       'user' || u || '.' || t || '.' || o || '@KEY.example.com', 'KEY-u' || o || '-' || t || '-' || u,
       'User ' || u || ' ' || left(md5(u::text), 8), true, true, 'oidc|KEY|' || o || '|' || t || '|' || u, 'okta',
       md5('KEY team ' || o || '/' || t)::uuid, (ARRAY['ADMIN','MEMBER','VIEWER'])[1 + u % 3]::userrole,
       md5('KEY org ' || o)::uuid, '{"theme":"dark","notifications":{"email":true,"slack":false}}'
FROM generate_series(1, 10) o, generate_series(1, 5) t, generate_series(1, 20) u;
INSERT INTO incidents (id, org_id, created_by, version, title, description, status, priority, assigned_to,
                       started_at, resolved_at, tags, incident_metadata, response_time_minutes, resolution_time_minutes,
                       team_id, organization_id)
SELECT md5('KEY incident ' || o || '/' || t || '/' || i)::uuid, md5('KEY org ' || o)::uuid,
       md5('KEY user ' || o || '/' || t || '/' || (1 + i % 20))::uuid, 1 + i % 3,
       'Elevated error rate on service ' || left(md5(i::text), 6) || ' in region ' || (ARRAY['us-east-1','eu-west-1','ap-south-1'])[1 + i % 3],
       'Deploy ' || md5(o || '/' || t || '/' || i) || ': ' ||
       (SELECT string_agg((ARRAY['the','checkout','api','error','rate','rose','above','threshold','after','deploy',
                                 'customers','saw','timeouts','when','submitting','orders','on-call','engineer','rolled',
                                 'back','release','opened','follow-up','canary','stage','alert','fired','acknowledged',
                                 'mitigated','resolved','database','latency','p99','spiked','queue','backlog','grew',
                                 'retries','exhausted','pool','connections','saturated','cache','miss','ratio','region',
                                 'failover','completed','root','cause'])[1 + floor(random() * 50)::int], ' ')
        FROM generate_series(1, 40 + i % 120) WHERE i IS NOT NULL) ||
       '. Request ids: ' || (SELECT string_agg(left(md5(i || '/' || r || random()), 12), ',') FROM generate_series(1, 1 + i % 6) r),
       (ARRAY['OPEN','IN_PROGRESS','RESOLVED','CLOSED','CANCELLED'])[1 + i % 5]::incidentstatus,
       (ARRAY['LOW','MEDIUM','HIGH','CRITICAL'])[1 + i % 4]::incidentpriority,
       md5('KEY user ' || o || '/' || t || '/' || (1 + (i * 7) % 20))::uuid,
       timestamptz '2025-01-01' + i * interval '17 minutes', timestamptz '2025-01-01' + i * interval '17 minutes' + interval '42 minutes',
       '["checkout","api","p1"]', json_build_object('runbook', 'https://runbooks.example.com/' || md5(i::text), 'pager', i % 2 = 0),
       5 + i % 30, 30 + i % 240,
       md5('KEY team ' || o || '/' || t)::uuid, md5('KEY org ' || o)::uuid
FROM generate_series(1, 10) o, generate_series(1, 5) t, generate_series(1, 200) i;
INSERT INTO configs (id, org_id, version, name, description, config_type, status, name_pattern, config_yaml,
                     priority, is_global, is_active, tags, team_id, organization_id)
SELECT md5('KEY config ' || o || '/' || t || '/' || k)::uuid, md5('KEY org ' || o)::uuid, 1, 'alert-rule-' || k,
       'Routes alerts of service ' || k || ' to the team', (ARRAY['ORGANIZATION','TEAM','ALERT','AGENT','GLOBAL'])[1 + k % 5]::configtype,
       (ARRAY['DRAFT','ACTIVE','DEPRECATED','ARCHIVED'])[1 + k % 4]::configstatus, 'service-' || k || '-*',
       'rules:' || (SELECT string_agg(E'\n  - match: severity == "' || (ARRAY['critical','high','medium','low'])[1 + r % 4] ||
                                      E'" and service == "svc-' || (k * r) % 97 || E'"\n    route: pagerduty/' ||
                                      left(md5(o || '/' || t || '/' || k || '/' || r), 16) || E'\n    throttle: ' || r || 'm', '')
                    FROM generate_series(1, 8) r),
       k, false, true, '["alerts"]', md5('KEY team ' || o || '/' || t)::uuid, md5('KEY org ' || o)::uuid
FROM generate_series(1, 10) o, generate_series(1, 5) t, generate_series(1, 10) k;
INSERT INTO agent_configs (id, org_id, version, name, agent_type, is_active, config, execution_timeout_seconds,
                           max_retries, retry_delay_seconds, triggers, team_id, organization_id)
SELECT md5('KEY agent ' || o || '/' || t || '/' || a)::uuid, md5('KEY org ' || o)::uuid, 1, 'agent-' || a,
       (ARRAY['INCIDENT_RESPONSE','MONITORING','ANALYSIS','NOTIFICATION','CUSTOM'])[1 + a % 5]::agenttype, true,
       json_build_object('model', 'gpt', 'prompt', repeat('Summarize the incident and propose next steps. ', 10)), 300, 3, 10,
       '["incident.created"]', md5('KEY team ' || o || '/' || t)::uuid, md5('KEY org ' || o)::uuid
FROM generate_series(1, 10) o, generate_series(1, 5) t, generate_series(1, 2) a;
INSERT INTO stats (id, org_id, metric_name, metric_type, value, count, "timestamp", time_window, labels, unit, team_id, organization_id)
SELECT md5('KEY stat ' || o || '/' || s)::uuid, md5('KEY org ' || o)::uuid,
       (ARRAY['mttr','mtta','incident_count','error_rate'])[1 + s % 4], 'gauge', (s % 997) * 1.25, s % 50,
       timestamptz '2025-01-01' + s * interval '1 minute', '1m', json_build_object('service', 'svc-' || s % 40), 'minutes',
       md5('KEY team ' || o || '/' || (1 + s % 5))::uuid, md5('KEY org ' || o)::uuid
FROM generate_series(1, 10) o, generate_series(1, 2000) s;
`)
}

// assertSameCounts checks that db holds as many rows per table as the
// live database on every shard (the benchmark's data is too large to
// compare row by row; the tests do that).
func (c *cluster) assertSameCounts(tb testing.TB, db string) {
	const q = `SELECT string_agg(tablename || '=' || (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM public.%I', tablename), false, true, '')))[1]::text, ',' ORDER BY tablename)
FROM pg_tables WHERE schemaname = 'public'`
	for i, pg := range c.pgs {
		want, err := pg.Exec(tb.Context(), pgcluster.BrownieDatabase, q)
		if err != nil {
			tb.Fatal(err)
		}
		got, err := pg.Exec(tb.Context(), db, q)
		if err != nil {
			tb.Fatal(err)
		}
		if got != want {
			tb.Fatalf("%s: %s has %s, want %s", c.shards[i].Name, db, got, want)
		}
	}
}
