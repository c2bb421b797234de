package proxy

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/xdg-go/scram"
)

func TestParseOptionsExtractsSettings(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want [][2]string
	}{
		{"", nil},
		{"   ", nil},
		{"-c timezone=UTC", [][2]string{{"timezone", "UTC"}}},
		{"-ctimezone=UTC", [][2]string{{"timezone", "UTC"}}},
		{"--search-path=a,b", [][2]string{{"search_path", "a,b"}}},
		{`-c search_path=a\ b`, [][2]string{{"search_path", "a b"}}},
		{`-c search_path=a\\b`, [][2]string{{"search_path", `a\b`}}},
		{"-c application_name=my-app", [][2]string{{"application_name", "my-app"}}},
		{"-c statement-timeout=5s", [][2]string{{"statement_timeout", "5s"}}},
		{"-c x=a=b", [][2]string{{"x", "a=b"}}},
		{"-c empty=", [][2]string{{"empty", ""}}},
		{
			"-c timezone=UTC\t --search-path=team_1,public\n-cstatement_timeout=5s  -c  lock_timeout=1s ",
			[][2]string{{"timezone", "UTC"}, {"search_path", "team_1,public"}, {"statement_timeout", "5s"}, {"lock_timeout", "1s"}},
		},
	} {
		got, err := parseOptions(tc.in)
		if err != nil {
			t.Errorf("parseOptions(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseOptions(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseOptionsRejectsWhatItCannotApply(t *testing.T) {
	for _, tc := range []struct{ in, wantErr string }{
		{"-B 10", `unsupported command-line option "-B"`},
		{"-c", "-c without a setting"},
		{"-c timezone=UTC -c", "-c without a setting"},
		{"-c novalue", `"novalue" is not of the form name=value`},
		{"-c =UTC", `"=UTC" is not of the form name=value`},
		{"--", `"" is not of the form name=value`},
		{"timezone=UTC", "unsupported command-line option"},
	} {
		got, err := parseOptions(tc.in)
		if err == nil {
			t.Errorf("parseOptions(%q) = %q, want an error", tc.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("parseOptions(%q) error %q, want it to contain %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestValidGUCNameAcceptsOnlyDottedIdentifiers(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"search_path", true},
		{"TimeZone", true},
		{"_x", true},
		{"a1", true},
		{"myext.setting", true},
		{"brownie.team_id", true},
		{strings.Repeat("a", 126), true},
		{strings.Repeat("a", 127), false},
		{"", false},
		{"1a", false},
		{".a", false},
		{"a-b", false},
		{"a b", false},
		{"a'b", false},
		{`a"b`, false},
		{"a;b", false},
		{"a\x00b", false},
		{"é", false},
	} {
		if got := validGUCName(tc.name); got != tc.want {
			t.Errorf("validGUCName(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestQuotedFieldsSplitsPgBouncerLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`"a" "b""c"`, []string{"a", `b"c`}},
		{`"alice" "SCRAM-SHA-256$4096:c2FsdA==$AA==:AA=="`, []string{"alice", "SCRAM-SHA-256$4096:c2FsdA==$AA==:AA=="}},
		{`  "a"   "b"  `, []string{"a", "b"}},
		{`"a""b"`, []string{`a"b`}},
		{`"a""" "b"`, []string{`a"`, "b"}},
		{`"" ""`, []string{"", ""}},
		{`"a b" "c d"`, []string{"a b", "c d"}},
		{`"a""""b"`, []string{`a""b`}},
		{`"a" "b" "extra"`, []string{"a", "b", "extra"}},
		{``, nil},
	} {
		got, err := quotedFields(tc.in)
		if err != nil {
			t.Errorf("quotedFields(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("quotedFields(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestQuotedFieldsRejectsUnterminatedAndBareFields(t *testing.T) {
	for _, in := range []string{`"a`, `"a" "b`, `"a""`, `"`, `a "b"`, `"a" b`, `"a"b`} {
		if got, err := quotedFields(in); err == nil {
			t.Errorf("quotedFields(%q) = %q, want an error", in, got)
		}
	}
}

// scramVerifier formats credentials as Postgres stores them in pg_authid.
func scramVerifier(c scram.StoredCredentials) string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", c.Iters, b64([]byte(c.Salt)), b64(c.StoredKey), b64(c.ServerKey))
}

// scramLogin runs a whole client/server SCRAM-SHA-256 exchange in memory
// and reports whether the server accepted the password.
func scramLogin(t *testing.T, creds scram.StoredCredentials, user, password string) bool {
	t.Helper()
	client, err := scram.SHA256.NewClient(user, password, "")
	if err != nil {
		t.Fatal(err)
	}
	cc := client.NewConversation()
	sc, err := newSCRAM(creds)
	if err != nil {
		t.Fatal(err)
	}
	var fromServer string
	for !cc.Done() {
		fromClient, err := cc.Step(fromServer)
		if err != nil {
			return false
		}
		if sc.Done() {
			break
		}
		if fromServer, err = sc.Step(fromClient); err != nil {
			return false
		}
	}
	return sc.Valid() && cc.Valid()
}

func writeUserListForTest(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadUserListReadsPlainPasswordsAndSCRAMVerifiers(t *testing.T) {
	client, err := scram.SHA256.NewClient("bob", "correct horse", "")
	if err != nil {
		t.Fatal(err)
	}
	bobCreds := client.GetStoredCredentials(scram.KeyFactors{Salt: "0123456789abcdef", Iters: 4096})
	path := writeUserListForTest(t, strings.Join([]string{
		`# PgBouncer-style user list`,
		`; another comment`,
		``,
		`   `,
		`"alice" "s3cret ""quoted"""`,
		`  "bob" "` + scramVerifier(bobCreds) + `"  `,
		`"dup" "first"`,
		`"dup" "second"`,
	}, "\n")+"\n")

	users, err := loadUserList(path)
	if err != nil {
		t.Fatalf("loadUserList: %v", err)
	}
	if len(users) != 3 {
		t.Fatalf("loaded %d users, want 3: %v", len(users), users)
	}
	if got := users["bob"]; !reflect.DeepEqual(got, bobCreds) {
		t.Errorf("bob's verifier decoded as %+v, want %+v", got, bobCreds)
	}
	for _, tc := range []struct {
		user, password string
		want           bool
	}{
		{"alice", `s3cret "quoted"`, true},
		{"alice", "s3cret", false},
		{"bob", "correct horse", true},
		{"bob", "wrong horse", false},
		{"dup", "second", true},
		{"dup", "first", false},
	} {
		if got := scramLogin(t, users[tc.user], tc.user, tc.password); got != tc.want {
			t.Errorf("SCRAM login as %s with %q: accepted %v, want %v", tc.user, tc.password, got, tc.want)
		}
	}
	if a := users["alice"]; a.Iters != 4096 || len(a.Salt) != 16 {
		t.Errorf("alice's derived verifier: %d iterations, %d-byte salt; want 4096 and 16", a.Iters, len(a.Salt))
	}
}

func TestLoadUserListRejectsBadLinesWithoutQuotingTheSecret(t *testing.T) {
	const secret = "hunter2-do-not-log"
	for _, tc := range []struct {
		name, line, wantErr string
	}{
		{"md5 verifier", `"carol" "md5` + strings.Repeat("0123456789abcdef", 2) + `"`, "md5 verifiers are not supported"},
		{"bare secret", `"carol" ` + secret, `line 2: want "user" "secret"`},
		{"unterminated secret", `"carol" "` + secret, `line 2: want "user" "secret"`},
		{"user only", `"carol"`, `line 2: want "user" "secret"`},
		{"bare user", `carol "` + secret + `"`, `line 2: want "user" "secret"`},
		{"verifier without keys", `"carol" "SCRAM-SHA-256$4096:c2FsdA==` + secret + `"`, "malformed SCRAM-SHA-256 verifier"},
		{"verifier with bad base64", `"carol" "SCRAM-SHA-256$4096:c2FsdA==$` + secret + `:AA=="`, "malformed SCRAM-SHA-256 verifier"},
		{"verifier with zero iterations", `"carol" "SCRAM-SHA-256$0:c2FsdA==$AA==:AA==` + `"`, "malformed SCRAM-SHA-256 verifier"},
		{"password SASLprep refuses", `"carol" "` + secret + "\a" + `"`, "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeUserListForTest(t, "# users\n"+tc.line+"\n")
			users, err := loadUserList(path)
			if err == nil {
				t.Fatalf("loadUserList accepted %q: %v", tc.line, users)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error quotes the secret: %q", err)
			}
		})
	}
}

func TestLoadUserListReportsAMissingFile(t *testing.T) {
	if _, err := loadUserList(filepath.Join(t.TempDir(), "missing")); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}

type otherAddr struct{}

func (otherAddr) Network() string { return "pipe" }
func (otherAddr) String() string  { return "pipe-peer" }

func TestClassifyPeerTrustsLocalPeersAndAllowedNetworks(t *testing.T) {
	allowed := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, tc := range []struct {
		name     string
		addr     net.Addr
		wantKind peerKind
		wantPeer string
	}{
		{"unix socket", &net.UnixAddr{Name: "/run/brownie/.s.PGSQL.5432", Net: "unix"}, peerLocal, "unix"},
		{"127.0.0.1 in four bytes", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: 50000}, peerLocal, "127.0.0.1"},
		{"127.0.0.1 in sixteen bytes", &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 50000}, peerLocal, "127.0.0.1"},
		{"another loopback address", &net.TCPAddr{IP: net.ParseIP("127.1.2.3")}, peerLocal, "127.1.2.3"},
		{"::1", &net.TCPAddr{IP: net.IPv6loopback, Port: 50000}, peerLocal, "::1"},
		{"::ffff:127.0.0.1", &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1")}, peerLocal, "127.0.0.1"},
		{"inside an allowed IPv4 prefix", &net.TCPAddr{IP: net.ParseIP("10.20.30.40")}, peerAllowed, "10.20.30.40"},
		{"mapped address inside an allowed prefix", &net.TCPAddr{IP: net.ParseIP("::ffff:10.1.1.1")}, peerAllowed, "10.1.1.1"},
		{"inside an allowed IPv6 prefix", &net.TCPAddr{IP: net.ParseIP("fd12::1")}, peerAllowed, "fd12::1"},
		{"outside every prefix", &net.TCPAddr{IP: net.ParseIP("192.168.1.5")}, peerRefused, "192.168.1.5"},
		{"just outside 10/8", &net.TCPAddr{IP: net.ParseIP("11.0.0.1")}, peerRefused, "11.0.0.1"},
		{"public IPv6", &net.TCPAddr{IP: net.ParseIP("2001:db8::1")}, peerRefused, "2001:db8::1"},
		{"unknown address type", otherAddr{}, peerRefused, "pipe-peer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, peer := classifyPeer(tc.addr, allowed)
			if kind != tc.wantKind || peer != tc.wantPeer {
				t.Errorf("classifyPeer(%v) = (%v, %q), want (%v, %q)", tc.addr, kind, peer, tc.wantKind, tc.wantPeer)
			}
		})
	}
}

func TestClassifyPeerRefusesRemotePeersWhenNothingIsAllowed(t *testing.T) {
	if kind, _ := classifyPeer(&net.TCPAddr{IP: net.ParseIP("10.0.0.1")}, nil); kind != peerRefused {
		t.Errorf("got %v, want peerRefused", kind)
	}
	if kind, _ := classifyPeer(&net.TCPAddr{}, nil); kind != peerRefused {
		t.Errorf("TCP address without IP: got %v, want peerRefused", kind)
	}
}

func TestQuoteLiteralQuotesForEitherStringSyntax(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "''"},
		{"UTC", "'UTC'"},
		{"team_1, public", "'team_1, public'"},
		{"it's", "'it''s'"},
		{"''", "''''''"},
		{`a\b`, `E'a\\b'`},
		{`\`, `E'\\'`},
		{`it's a \ path`, `E'it''s a \\ path'`},
		{`\'; DROP TABLE x; --`, `E'\\''; DROP TABLE x; --'`},
	} {
		if got := quoteLiteral(tc.in); got != tc.want {
			t.Errorf("quoteLiteral(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
