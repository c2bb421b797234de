package app

import (
	"context"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

func TestQueriesRunThroughTheSidecarOnCertificateAuthenticatedPostgres(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Schema: true})
	sc := startSidecar(t, srv, nil)
	conn := sc.connect(t, "options='-c timezone=UTC'")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var user, tz, ssl string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_setting('TimeZone'), (SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid())").Scan(&user, &tz, &ssl); err != nil {
		t.Fatal(err)
	}
	if user != "brownie-fastapi-server" || tz != "UTC" || ssl != "true" {
		t.Fatalf("got user %q timezone %q ssl %q", user, tz, ssl)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1", "incidents").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("incidents table visible %d times", n)
	}
}
