package conformance

import (
	"strings"
	"testing"
)

const sampleJSON = `{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestA"}
{"Action":"pass","Package":"github.com/jackc/pgx/v5","Test":"TestA/sub"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5","Test":"TestA"}
{"Action":"pass","Package":"github.com/jackc/pgx/v5","Test":"TestB"}
{"Action":"skip","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestC"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestD/sub"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestD"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgconn"}
# github.com/jackc/pgx/v5/broken
{"Action":"fail","Package":"github.com/jackc/pgx/v5/broken"}
{"Action":"pass","Package":"github.com/jackc/pgx/v5"}
`

func TestParseTestJSONFoldsSubtestsAndNamesPackages(t *testing.T) {
	res, err := ParseTestJSON(strings.NewReader(sampleJSON), "github.com/jackc/pgx/v5")
	if err != nil {
		t.Fatal(err)
	}
	want := Results{
		"pgx.TestA": Fail, "pgx.TestB": Pass, "pgconn.TestC": Skip, "pgconn.TestD": Fail,
		"broken.(package)": Fail, // failed outside any test: a build failure
	}
	if len(res) != len(want) {
		t.Fatalf("got %v, want %v", res, want)
	}
	for k, v := range want {
		if res[k] != v {
			t.Errorf("%s: got %q, want %q", k, res[k], v)
		}
	}
	if got := strings.Join(res.Failed(), " "); got != "broken.(package) pgconn.TestD pgx.TestA" {
		t.Errorf("Failed() = %s", got)
	}
}

func TestTestOutputKeepsTheTestsLastLines(t *testing.T) {
	const out = `{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestB","Output":"not mine\n"}
{"Action":"output","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA","Output":"another package\n"}
{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestA/sub","Output":"    a_test.go:9: boom\n"}
{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestA","Output":"--- FAIL: TestA (0.01s)\n"}
`
	if got, want := TestOutput(strings.NewReader(out), "github.com/jackc/pgx/v5", "pgx.TestA", 2), "    a_test.go:9: boom\n--- FAIL: TestA (0.01s)"; got != want {
		t.Errorf("TestOutput = %q, want %q", got, want)
	}
}

func TestParseExpectedNeedsAReasonForEveryTest(t *testing.T) {
	exp, err := ParseExpected(strings.NewReader(`# comment

session   pgx.TestA   the pid is the sidecar's
transaction? pgconn.TestD  flaky straight against Postgres too
`))
	if err != nil {
		t.Fatal(err)
	}
	if e := exp["session"]["pgx.TestA"]; e.Reason != "the pid is the sidecar's" || e.Flaky {
		t.Errorf("session pgx.TestA: %+v", e)
	}
	if e := exp["transaction"]["pgconn.TestD"]; !e.Flaky {
		t.Errorf("transaction pgconn.TestD: %+v, want flaky", e)
	}
	for _, bad := range []string{"session pgx.TestA", "session pgx.TestA why\nsession pgx.TestA again"} {
		if _, err := ParseExpected(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestCompareReportsNewFailuresPassingAndMissingTests(t *testing.T) {
	res := Results{"pgx.TestNew": Fail, "pgx.TestListed": Fail, "pgx.TestFixed": Pass, "pgx.TestFlaky": Pass, "pgx.TestSkipped": Skip}
	d := Compare(res, map[string]Expectation{
		"pgx.TestListed":  {Reason: "r"},
		"pgx.TestFixed":   {Reason: "r"},
		"pgx.TestFlaky":   {Reason: "r", Flaky: true},
		"pgx.TestSkipped": {Reason: "r"},
		"pgx.TestGone":    {Reason: "r"},
	})
	if strings.Join(d.Unexpected, " ") != "pgx.TestNew" {
		t.Errorf("Unexpected = %v", d.Unexpected)
	}
	if strings.Join(d.NowPassing, " ") != "pgx.TestFixed pgx.TestSkipped" {
		t.Errorf("NowPassing = %v", d.NowPassing)
	}
	if strings.Join(d.Missing, " ") != "pgx.TestGone" {
		t.Errorf("Missing = %v", d.Missing)
	}
	if d.OK() || !strings.Contains(d.String(), "remove it from the list") {
		t.Errorf("diff not reported: %s", d)
	}
	if !(Compare(Results{"pgx.TestListed": Fail}, map[string]Expectation{"pgx.TestListed": {Reason: "r"}})).OK() {
		t.Error("an exact match is not OK")
	}
}
