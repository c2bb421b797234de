package conformance

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// Outcome is the result of one top-level test.
type Outcome string

// Outcomes of go test -json.
const (
	Pass Outcome = "pass"
	Fail Outcome = "fail"
	Skip Outcome = "skip"
)

// Results maps a top-level test, named "package.TestName" with the package
// path relative to the suite's module ("." for its root), to its outcome.
// A package that failed outside any test (a build failure, a panic in
// TestMain, a timeout) is recorded under "package.(package)".
type Results map[string]Outcome

// Count returns how many tests had outcome o.
func (r Results) Count(o Outcome) int {
	n := 0
	for _, v := range r {
		if v == o {
			n++
		}
	}
	return n
}

// Failed returns the failed tests, sorted.
func (r Results) Failed() []string {
	var out []string
	for k, v := range r {
		if v == Fail {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

type testEvent struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// TestOutput returns the last max lines the top-level test named test
// ("package.TestName", as in Results) and its subtests printed in the
// output of `go test -json` for module.
func TestOutput(r io.Reader, module, test string, max int) string {
	var lines []string
	_ = eachEvent(r, func(ev testEvent) {
		top, _, _ := strings.Cut(ev.Test, "/")
		if ev.Action != "output" || top == "" || relPackage(ev.Package, module)+"."+top != test {
			return
		}
		lines = append(lines, strings.TrimRight(ev.Output, "\n"))
		if len(lines) > max {
			lines = lines[1:]
		}
	})
	return strings.Join(lines, "\n")
}

// eachEvent calls fn with every event of `go test -json` output, skipping
// lines that are not JSON (go's own messages on a build failure).
func eachEvent(r io.Reader, fn func(testEvent)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev testEvent
		if line := sc.Bytes(); len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			continue
		}
		fn(ev)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading go test output: %w", err)
	}
	return nil
}

// ParseTestJSON reads the output of `go test -json` for module (the
// suite's module path) and returns the outcome of every top-level test.
// Subtests are folded into their top-level test. Lines that are not JSON
// (go's own messages on a build failure) are ignored; the package's fail
// event records the failure.
func ParseTestJSON(r io.Reader, module string) (Results, error) {
	res := Results{}
	pkgTests := map[string]bool{} // packages that reported any failed test
	err := eachEvent(r, func(ev testEvent) {
		pkg := relPackage(ev.Package, module)
		switch ev.Action {
		case "pass", "fail", "skip":
		default:
			return
		}
		if ev.Test == "" {
			if ev.Action == "fail" && !pkgTests[pkg] {
				res[pkg+".(package)"] = Fail
			}
			return
		}
		if strings.Contains(ev.Test, "/") {
			return
		}
		res[pkg+"."+ev.Test] = Outcome(ev.Action)
		if ev.Action == "fail" {
			pkgTests[pkg] = true
		}
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func relPackage(pkg, module string) string {
	switch {
	case pkg == module:
		return path.Base(strings.TrimSuffix(module, "/v"+path.Base(module)[1:])) // github.com/jackc/pgx/v5 → pgx
	case strings.HasPrefix(pkg, module+"/"):
		return pkg[len(module)+1:]
	}
	return pkg
}

// Expected is the committed list of expected failures: for each mode, the
// tests (as named in Results) that fail through the sidecar.
type Expected map[string]map[string]Expectation

// Expectation is why a listed test fails.
type Expectation struct {
	Reason string
	// Flaky marks a test that may pass or fail (it is flaky straight
	// against Postgres too): neither outcome is a difference.
	Flaky bool
}

// ParseExpected reads an expected-failures file. Each non-blank line that
// does not start with '#' is "mode test reason…": the mode (for example
// session or transaction, with a trailing '?' for a test that may pass or
// fail), the test as named in Results, and a reason that must not be
// empty.
func ParseExpected(r io.Reader) (Expected, error) {
	exp := Expected{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("line %d: want \"mode test reason\", got %q", n, line)
		}
		mode, test := f[0], f[1]
		reason := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(strings.TrimPrefix(line, mode)), test))
		flaky := strings.HasSuffix(mode, "?")
		mode = strings.TrimSuffix(mode, "?")
		if exp[mode] == nil {
			exp[mode] = map[string]Expectation{}
		}
		if _, dup := exp[mode][test]; dup {
			return nil, fmt.Errorf("line %d: %s listed twice for mode %s", n, test, mode)
		}
		exp[mode][test] = Expectation{Reason: reason, Flaky: flaky}
	}
	return exp, sc.Err()
}

// Diff is how one mode's results differ from the expected failures.
type Diff struct {
	// Unexpected failed but are not listed: regressions.
	Unexpected []string
	// NowPassing are listed but passed: remove them from the list.
	NowPassing []string
	// Missing are listed but did not run at all (renamed or removed
	// tests): remove or rename them.
	Missing []string
}

// OK reports whether the results match the list exactly.
func (d Diff) OK() bool {
	return len(d.Unexpected) == 0 && len(d.NowPassing) == 0 && len(d.Missing) == 0
}

// String explains the differences, one test per line.
func (d Diff) String() string {
	var b strings.Builder
	for _, t := range d.Unexpected {
		fmt.Fprintf(&b, "new failure (not in the expected list): %s\n", t)
	}
	for _, t := range d.NowPassing {
		fmt.Fprintf(&b, "expected to fail but passed (remove it from the list): %s\n", t)
	}
	for _, t := range d.Missing {
		fmt.Fprintf(&b, "expected to fail but did not run (remove or rename it): %s\n", t)
	}
	return b.String()
}

// Compare compares the results of one mode with its expected failures. A
// listed test that was skipped counts as not failing.
func Compare(res Results, expected map[string]Expectation) Diff {
	var d Diff
	for _, t := range res.Failed() {
		if _, ok := expected[t]; !ok {
			d.Unexpected = append(d.Unexpected, t)
		}
	}
	for t, e := range expected {
		switch o, ran := res[t]; {
		case !ran:
			d.Missing = append(d.Missing, t)
		case o != Fail && !e.Flaky:
			d.NowPassing = append(d.NowPassing, t)
		}
	}
	slices.Sort(d.NowPassing)
	slices.Sort(d.Missing)
	return d
}
