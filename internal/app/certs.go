package app

import (
	"flag"
	"fmt"

	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// certsCommand implements `certs dev --out DIR [--cn NAME]`.
func certsCommand(args []string, environ map[string]string, out IO) int {
	if len(args) == 0 || args[0] != "dev" {
		fmt.Fprintln(out.Stderr, "usage: brownie-sidecar certs dev --out DIR [--cn NAME]")
		return ExitConfig
	}
	fs, dir, cn := certsDevFlags(environ)
	fs.SetOutput(out.Stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return ExitConfig
	}
	if err := brownietls.WriteDevCerts(*dir, *cn); err != nil {
		fmt.Fprintln(out.Stderr, "certs dev:", err)
		return ExitFail
	}
	fmt.Fprintf(out.Stdout, "wrote development CA, server and client (CN %s) certificates to %s\n", *cn, *dir)
	return ExitOK
}

// certsDevFlags returns the flag set of `certs dev`: --out and --cn (whose
// default is DB_USER).
func certsDevFlags(environ map[string]string) (fs *flag.FlagSet, dir, cn *string) {
	fs = flag.NewFlagSet("certs dev", flag.ContinueOnError)
	dir = fs.String("out", "dev-certs", "directory to write ca.crt, server.crt, server.key, client.crt, client.key")
	cn = fs.String("cn", defaultString(environ["DB_USER"], "brownie-fastapi-server"), "client certificate common name (the database role)")
	return fs, dir, cn
}

func defaultString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
