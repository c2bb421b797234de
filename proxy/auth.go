package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/xdg-go/scram"
)

// userList holds client credentials from a PgBouncer-style auth file. It is
// immutable after loading.
type userList map[string]scram.StoredCredentials

// loadUserList reads lines of the form `"name" "secret"`. A secret is either
// a SCRAM-SHA-256 verifier as stored by Postgres
// (SCRAM-SHA-256$iter:salt$StoredKey:ServerKey) or a plain password, from
// which a verifier is derived at load time. Errors name the line, never the
// secret.
func loadUserList(path string) (userList, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("client auth file: %w", err)
	}
	defer f.Close()
	users := userList{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields, err := quotedFields(line)
		if err != nil || len(fields) < 2 {
			return nil, fmt.Errorf("client auth file %s line %d: want \"user\" \"secret\"", path, n)
		}
		creds, err := credentials(fields[0], fields[1])
		if err != nil {
			return nil, fmt.Errorf("client auth file %s line %d (user %q): %v", path, n, fields[0], err)
		}
		users[fields[0]] = creds
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("client auth file: %w", err)
	}
	return users, nil
}

// quotedFields splits `"a" "b""c"` into [a, b"c].
func quotedFields(line string) ([]string, error) {
	var out []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		if line[0] != '"' {
			return nil, fmt.Errorf("expected quote")
		}
		var b strings.Builder
		i := 1
		for ; i < len(line); i++ {
			if line[i] == '"' {
				if i+1 < len(line) && line[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			b.WriteByte(line[i])
		}
		if i >= len(line) {
			return nil, fmt.Errorf("unterminated quote")
		}
		out = append(out, b.String())
		line = line[i+1:]
	}
	return out, nil
}

func credentials(user, secret string) (scram.StoredCredentials, error) {
	if rest, ok := strings.CutPrefix(secret, "SCRAM-SHA-256$"); ok {
		// iter:salt$StoredKey:ServerKey
		kf, keys, ok := strings.Cut(rest, "$")
		iterS, saltS, ok1 := strings.Cut(kf, ":")
		storedS, serverS, ok2 := strings.Cut(keys, ":")
		if !ok || !ok1 || !ok2 {
			return scram.StoredCredentials{}, fmt.Errorf("malformed SCRAM-SHA-256 verifier")
		}
		iter, err1 := strconv.Atoi(iterS)
		salt, err2 := base64.StdEncoding.DecodeString(saltS)
		stored, err3 := base64.StdEncoding.DecodeString(storedS)
		server, err4 := base64.StdEncoding.DecodeString(serverS)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || iter < 1 {
			return scram.StoredCredentials{}, fmt.Errorf("malformed SCRAM-SHA-256 verifier")
		}
		return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iter}, StoredKey: stored, ServerKey: server}, nil
	}
	if strings.HasPrefix(secret, "md5") && len(secret) == 35 {
		return scram.StoredCredentials{}, fmt.Errorf("md5 verifiers are not supported; use SCRAM-SHA-256")
	}
	c, err := scram.SHA256.NewClient(user, secret, "")
	if err != nil {
		return scram.StoredCredentials{}, err
	}
	salt := make([]byte, 16)
	if _, err := randRead(salt); err != nil {
		return scram.StoredCredentials{}, err
	}
	return c.GetStoredCredentials(scram.KeyFactors{Salt: string(salt), Iters: 4096}), nil
}

// peerKind classifies a client by where it connects from.
type peerKind int

const (
	peerLocal   peerKind = iota // Unix socket or loopback TCP
	peerAllowed                 // TCP from an allowed CIDR
	peerRefused
)

func classifyPeer(addr net.Addr, allowed []netip.Prefix) (peerKind, string) {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return peerLocal, "unix"
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if ip.IsLoopback() {
			return peerLocal, ip.String()
		}
		for _, p := range allowed {
			if p.Contains(ip) {
				return peerAllowed, ip.String()
			}
		}
		return peerRefused, ip.String()
	}
	return peerRefused, addr.String()
}

// scramExchange is one server-side SCRAM-SHA-256 conversation.
func newSCRAM(creds scram.StoredCredentials) (*scram.ServerConversation, error) {
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return nil, err
	}
	return srv.NewConversation(), nil
}

// parseOptions splits a startup "options" value the way the postmaster
// does (whitespace-separated, backslash escapes) and returns the -c/--name
// settings in it.
func parseOptions(s string) ([][2]string, error) {
	var args []string
	var cur bytes.Buffer
	inArg := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inArg = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	var out [][2]string
	for i := 0; i < len(args); i++ {
		a := args[i]
		var kv string
		switch {
		case a == "-c":
			if i+1 >= len(args) {
				return nil, fmt.Errorf("-c without a setting")
			}
			i++
			kv = args[i]
		case strings.HasPrefix(a, "-c"):
			kv = a[2:]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			return nil, fmt.Errorf("unsupported command-line option %q (only -c name=value and --name=value are supported)", a)
		}
		name, val, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("option %q is not of the form name=value", kv)
		}
		out = append(out, [2]string{strings.ReplaceAll(name, "-", "_"), val})
	}
	return out, nil
}

// validGUCName reports whether name is safe to pass to set_config: a
// (possibly dotted) identifier.
func validGUCName(name string) bool {
	if name == "" || len(name) > 63*2 {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
		case (c >= '0' && c <= '9') || c == '.':
			if i == 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}
