package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/brownie/brownie-sidecar/backup"
	"github.com/brownie/brownie-sidecar/internal/config"
)

// adminToken returns the admin bearer token: ADMIN_TOKEN, or the contents of
// ADMIN_TOKEN_FILE with surrounding white space trimmed. The file is read
// once, when called; an unreadable or empty file is an error that names the
// file but never shows its contents.
func adminToken(a config.Admin) (string, error) {
	if a.TokenFile == "" {
		return string(a.Token), nil
	}
	data, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return "", fmt.Errorf("ADMIN_TOKEN_FILE: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("ADMIN_TOKEN_FILE %s is empty", a.TokenFile)
	}
	return tok, nil
}

const backupUsage = `usage: brownie-sidecar backup [--addr HOST:PORT] create
       brownie-sidecar backup [--addr HOST:PORT] list
       brownie-sidecar backup [--addr HOST:PORT] show NAME
       brownie-sidecar backup [--addr HOST:PORT] restore NAME (--into DB | --confirm NAME)
`

// maxResponseBytes bounds what the CLI reads from the admin API (a list of
// manifests).
const maxResponseBytes = 64 << 20

// backupSubcommands are the words backupCommand accepts after "backup".
var backupSubcommands = []string{"create", "list", "show", "restore"}

// backupFlags returns the flag set of the backup commands.
func backupFlags() (fs *flag.FlagSet, addr, into, confirm *string) {
	fs = flag.NewFlagSet("backup", flag.ContinueOnError)
	addr = fs.String("addr", "", "admin address, HOST:PORT or a URL (default: ADMIN_ADDR with METRICS_PORT)")
	into = fs.String("into", "", "restore: new database to restore into, on every shard")
	confirm = fs.String("confirm", "", "restore: the backup name again, to restore in place")
	return fs, addr, into, confirm
}

// backupCommand implements `backup create|list|show|restore`: it calls the
// running sidecar's admin API, prints the JSON answer indented on stdout,
// and reports errors on stderr with ExitFail (ExitConfig for usage and
// configuration errors). Flags may come before or after the arguments.
func backupCommand(ctx context.Context, args []string, environ map[string]string, out IO) int {
	fs, addr, into, confirm := backupFlags()
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			fmt.Fprintf(out.Stderr, "backup: %v\n%s", err, backupUsage)
			return ExitConfig
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	usageErr := func(msg string) int {
		fmt.Fprintf(out.Stderr, "backup: %s\n%s", msg, backupUsage)
		return ExitConfig
	}
	if len(pos) == 0 {
		return usageErr("missing command")
	}
	var method, path string
	var body any
	sub := pos[0]
	switch {
	case sub == "create" && len(pos) == 1:
		method, path = http.MethodPost, "/backup/create"
	case sub == "list" && len(pos) == 1:
		method, path = http.MethodGet, "/backup/list"
	case sub == "show" && len(pos) == 2:
		method, path = http.MethodGet, "/backup/"+url.PathEscape(pos[1])
	case sub == "restore" && len(pos) == 2:
		method, path = http.MethodPost, "/backup/restore"
		body = backup.RestoreRequest{BackupName: pos[1], TargetDatabase: *into, Confirm: *confirm}
	case slices.Contains(backupSubcommands, sub):
		return usageErr("wrong number of arguments for " + sub)
	default:
		return usageErr(fmt.Sprintf("unknown command %q", sub))
	}
	if sub != "restore" && (*into != "" || *confirm != "") {
		return usageErr("--into and --confirm apply to restore only")
	}

	cfg, err := config.Load(environ)
	if err != nil {
		fmt.Fprintln(out.Stderr, err)
		return ExitConfig
	}
	base, err := adminBaseURL(cfg.Admin, *addr)
	if err != nil {
		return usageErr(err.Error())
	}
	token, err := adminToken(cfg.Admin)
	if err != nil {
		fmt.Fprintln(out.Stderr, "backup:", err)
		return ExitConfig
	}
	return callAdmin(ctx, out, "backup "+sub, method, base+path, token, body)
}

// adminBaseURL returns the admin API's base URL: override (HOST:PORT or a URL)
// when set, else the configured admin address, with an unspecified host
// (":8001", 0.0.0.0, ::) replaced by the loopback address.
func adminBaseURL(a config.Admin, override string) (string, error) {
	if strings.HasPrefix(override, "http://") || strings.HasPrefix(override, "https://") {
		u, err := url.Parse(override)
		if err != nil || u.Host == "" {
			return "", fmt.Errorf("--addr %q is not a URL", override)
		}
		return strings.TrimRight(override, "/"), nil
	}
	hostport := override
	if hostport == "" {
		if !a.Enabled() {
			return "", errors.New("the admin port is off (ADMIN_ADDR=off): pass --addr")
		}
		hostport = a.Address()
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %v", hostport, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// callAdmin sends one request and prints the answer. A JSON answer is
// printed indented on stdout, except a bare {"error": ...}; an error status
// also prints "<op>: <status>: <error>" on stderr and returns ExitFail.
func callAdmin(ctx context.Context, out IO, op, method, target, token string, body any) int {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			fmt.Fprintf(out.Stderr, "%s: %v\n", op, err)
			return ExitFail
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		fmt.Fprintf(out.Stderr, "%s: %v\n", op, err)
		return ExitConfig
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// No client timeout: a backup or restore takes as long as it takes, and
	// ctx ends it on SIGINT/SIGTERM.
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(out.Stderr, "%s: admin API unreachable: %v\n", op, err)
		return ExitFail
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		fmt.Fprintf(out.Stderr, "%s: reading the answer: %v\n", op, err)
		return ExitFail
	}
	data = bytes.TrimSpace(data)
	isJSON := json.Valid(data)
	var fields map[string]json.RawMessage // nil unless an object
	var apiErr string
	if isJSON && json.Unmarshal(data, &fields) == nil {
		_ = json.Unmarshal(fields["error"], &apiErr)
	}
	if isJSON && (resp.StatusCode < 300 || len(fields) > 1) {
		var pretty bytes.Buffer
		_ = json.Indent(&pretty, data, "", "  ")
		pretty.WriteByte('\n')
		_, _ = out.Stdout.Write(pretty.Bytes())
	}
	if resp.StatusCode < 300 {
		return ExitOK
	}
	if apiErr == "" {
		apiErr = strings.TrimSpace(string(data))
		if !isJSON && len(apiErr) > 200 {
			apiErr = apiErr[:200] + "…"
		}
	}
	fmt.Fprintf(out.Stderr, "%s: %s: %s\n", op, resp.Status, apiErr)
	return ExitFail
}
