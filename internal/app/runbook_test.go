package app

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// invocationRE finds `brownie-sidecar <args>` where a shell line runs it:
// at the start of the line, after `--` (kubectl exec, run), a pipe, `&&`,
// `;` or `$(`, never inside a longer name (brownie-sidecar-injector, an
// image, a chart path) nor as another command's argument (a Vault policy
// name).
var invocationRE = regexp.MustCompile(`(?:^\s*(?:\$\s+)?|--\s+|\|\s*|&&\s*|;\s*|\$\()brownie-sidecar((?:[ \t]+[^\s|;&#>)\\]+)*)`)

// docInvocations returns every brownie-sidecar command line in the fenced
// code blocks of the Markdown files, with its file.
func docInvocations(t *testing.T, files []string) map[string][][]string {
	t.Helper()
	out := map[string][][]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		inCode := false
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inCode = !inCode
				continue
			}
			if !inCode {
				continue
			}
			for _, m := range invocationRE.FindAllStringSubmatch(line, -1) {
				out[f] = append(out[f], strings.Fields(m[1]))
			}
		}
	}
	return out
}

// checkInvocation reports what in args the binary does not accept: an
// unknown command, sub-command or flag.
func checkInvocation(args []string) string {
	name := "run"
	if len(args) > 0 {
		name = args[0]
		args = args[1:]
	}
	switch name {
	case "help", "-h", "--help", "--version":
		return ""
	}
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return "unknown command " + name
	}
	c := commands[i]
	var fs *flag.FlagSet
	if c.flags != nil {
		fs = c.flags()
	}
	var pos []string
	for j := 0; j < len(args); j++ {
		a := args[j]
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		fname, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fs == nil || fs.Lookup(fname) == nil {
			return "unknown flag " + a + " of " + name
		}
		if bf, ok := fs.Lookup(fname).Value.(interface{ IsBoolFlag() bool }); !hasValue && !(ok && bf.IsBoolFlag()) {
			j++ // the flag's value
		}
	}
	if c.subs != nil {
		if len(pos) == 0 || !slices.Contains(c.subs, pos[0]) {
			return name + " without one of its sub-commands " + strings.Join(c.subs, ", ")
		}
	} else if c.flags == nil && len(pos) > 0 && name != "run" {
		return name + " takes no argument, got " + pos[0]
	}
	return ""
}

func TestRunbooksNameOnlyExistingCommands(t *testing.T) {
	files, _ := filepath.Glob("../../docs/runbooks/*.md")
	more, _ := filepath.Glob("../../docs/*.md")
	files = append(append(files, more...), "../../deploy/vault/README.md")
	found := docInvocations(t, files)
	n := 0
	for f, list := range found {
		for _, args := range list {
			n++
			if why := checkInvocation(args); why != "" {
				t.Errorf("%s: brownie-sidecar %s: %s", f, strings.Join(args, " "), why)
			}
		}
	}
	runbooks := 0
	for f := range found {
		if strings.Contains(f, "runbooks") {
			runbooks++
		}
	}
	if runbooks < 3 || n < 6 {
		t.Fatalf("found %d invocations in %d runbooks: the scan is broken", n, runbooks)
	}
}

// The checker itself must refuse what the binary refuses.
func TestRunbookCheckerRefusesUnknownCommandsAndFlags(t *testing.T) {
	for _, bad := range [][]string{
		{"backups", "list"}, {"backup", "lst"}, {"backup", "restore", "X", "--to", "db"},
		{"certs", "prod"}, {"dev", "--rest"}, {"inject", "--port", "8443"}, {"version", "now"},
	} {
		if checkInvocation(bad) == "" {
			t.Errorf("brownie-sidecar %s accepted", strings.Join(bad, " "))
		}
	}
	for _, good := range [][]string{
		{"backup", "--addr", "10.0.0.5:8001", "list"}, {"backup", "restore", "X", "--into", "db"},
		{"certs", "dev", "--out", "d", "--cn", "postgres"}, {"dev", "--reset"}, {"inject"}, {"version"}, {},
	} {
		if why := checkInvocation(good); why != "" {
			t.Errorf("brownie-sidecar %s refused: %s", strings.Join(good, " "), why)
		}
	}
}
