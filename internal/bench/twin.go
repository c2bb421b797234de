package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/brownie/brownie-sidecar/router"
	"github.com/brownie/brownie-sidecar/twophase"
)

// The signup's floor on two shards: the sharded table's last row runs the
// signup with no sidecar at all. This program's client connects to both
// shard primaries itself and sends what the sidecar sends them — the
// organization and the user on both shards, the team on its own, the
// two-phase commit with the decision row on the anchor (package
// twophase's statements) — with fewer round trips than the sidecar can
// (each shard's BEGIN and first insert in one pipeline, both shards at
// once) and the time stamps as parameters instead of pinned defaults. It
// is the least work this protocol costs these clusters on this machine:
// no sidecar can run the signup faster, so it says whether the signup's
// target can be met here at all.

// colTwin2 names the client that coordinates the two shards itself.
const colTwin2 = "client-2"

// The twin's inserts: the workload's, with the time stamps the sidecar
// pins (created_at, updated_at) given as a parameter.
const (
	sqlTwinOrg  = `INSERT INTO organizations (id, name, slug, is_active, max_teams, max_users_per_team, created_at, updated_at) VALUES ($1, $2, $2, true, 10, 50, $3, $3)`
	sqlTwinUser = `INSERT INTO users (id, org_id, organization_id, team_id, email, username, is_active, is_verified, role, created_at, updated_at) VALUES ($1, $2, $2, $3, $4, $5, true, false, 'ADMIN', $6, $6)`
)

// twinSignup returns the twin's transaction for shards conns (one per
// shard, in shard-map order: the first is the anchor), placing each new
// team with rt.
func twinSignup(rt *router.Router, names []string) peerTxFunc {
	return func(ctx context.Context, conns []*pgx.Conn, rng *rand.Rand, _ *workloadEnv) error {
		if len(conns) != len(names) {
			return fmt.Errorf("twin signup: %d connections for %d shards", len(conns), len(names))
		}
		org, team, user := newUUID(rng), newUUID(rng), newUUID(rng)
		k, err := rt.ParseKey(uuidText(team))
		if err != nil {
			return err
		}
		home := -1
		for i, n := range names {
			if n == rt.Place(k) {
				home = i
			}
		}
		if home < 0 {
			return fmt.Errorf("twin signup: team placed on a shard outside %v", names)
		}
		now := time.Now().UTC()
		name, email := uuidText(org), uuidText(user)+"@bench.example"
		// Every shard: BEGIN and the organization, in one pipeline.
		err = onEach(conns, func(c *pgx.Conn) error {
			b := &pgx.Batch{}
			b.Queue("BEGIN")
			b.Queue(sqlTwinOrg, org, name, now)
			return c.SendBatch(ctx, b).Close()
		})
		if err == nil {
			err = execTag(ctx, conns[home], "INSERT 0 1", sqlNewTeam, team, org, uuidText(team))
		}
		if err == nil {
			err = onEach(conns, func(c *pgx.Conn) error {
				return execTag(ctx, c, "INSERT 0 1", sqlTwinUser, user, org, team, email, uuidText(user), now)
			})
		}
		gid := twophase.NewGID(names[0])
		if err == nil {
			_, err = conns[0].Exec(ctx, twophase.PrepareAnchor(gid), pgx.QueryExecModeSimpleProtocol)
		}
		if err == nil {
			err = onEach(conns[1:], func(c *pgx.Conn) error {
				_, err := c.Exec(ctx, twophase.Prepare(gid), pgx.QueryExecModeSimpleProtocol)
				return err
			})
		}
		if err != nil {
			for _, c := range conns {
				_, _ = c.Exec(ctx, "ROLLBACK")
				_, _ = c.Exec(ctx, twophase.RollbackPrepared(gid), pgx.QueryExecModeSimpleProtocol)
			}
			return err
		}
		if _, err := conns[0].Exec(ctx, twophase.CommitPrepared(gid), pgx.QueryExecModeSimpleProtocol); err != nil {
			return err
		}
		return onEach(conns[1:], func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, twophase.CommitPrepared(gid), pgx.QueryExecModeSimpleProtocol)
			return err
		})
	}
}

// onEach runs fn on every connection at once and returns the first error.
func onEach(conns []*pgx.Conn, fn func(*pgx.Conn) error) error {
	if len(conns) == 1 {
		return fn(conns[0])
	}
	errs := make(chan error, len(conns)-1)
	for _, c := range conns[1:] {
		go func() { errs <- fn(c) }()
	}
	err := fn(conns[0])
	for range len(conns) - 1 {
		if e := <-errs; err == nil {
			err = e
		}
	}
	return err
}
