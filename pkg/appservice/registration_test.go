package appservice

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const server = "example.org"

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const ircReg = `
id: "IRC Bridge"
url: "http://127.0.0.1:1234"
as_token: "as-irc"
hs_token: "hs-irc"
sender_localpart: "_irc_bot"
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_bridge_.*"
  aliases:
    - exclusive: false
      regex: "#_irc_bridge_.*"
  rooms: []
protocols: ["irc"]
de.sorunome.msc2409.push_ephemeral: true
some.unknown.key: 1
`

func TestLoadSpecExample(t *testing.T) {
	dir := t.TempDir()
	set, err := LoadFiles([]string{write(t, dir, "irc.yaml", ircReg)}, server)
	if err != nil {
		t.Fatal(err)
	}
	r := set.ByID("IRC Bridge")
	if r == nil || set.ByASToken("as-irc") != r || set.ByASToken("hs-irc") != nil || set.ByASToken("") != nil {
		t.Fatalf("lookups: %+v", r)
	}
	if r.SenderUserID() != "@_irc_bot:example.org" || r.BaseURL() != "http://127.0.0.1:1234" || !r.IsRateLimited() ||
		!r.WantsEphemeral() || len(set.ByProtocol("irc")) != 1 || len(set.ByProtocol("xmpp")) != 0 {
		t.Fatalf("fields: %+v", r)
	}
	cases := []struct {
		name string
		got  bool
		want bool
	}{
		{"sender", r.IsInterestedInUser("@_irc_bot:example.org"), true},
		{"namespaced user", r.IsInterestedInUser("@_irc_bridge_alice:example.org"), true},
		{"namespaced localpart on another server", r.IsInterestedInUser("@_irc_bridge_alice:other.org"), false},
		{"other user", r.IsInterestedInUser("@alice:example.org"), false},
		{"regex is anchored", r.IsInterestedInUser("@x_@_irc_bridge_a:example.org"), false},
		{"alias", r.IsInterestedInAlias("#_irc_bridge_chan:example.org"), true},
		{"other alias", r.IsInterestedInAlias("#chan:example.org"), false},
		{"no rooms namespace", r.IsInterestedInRoom("!abc:example.org"), false},
		{"exclusive user", r.IsExclusiveUser("@_irc_bridge_x:example.org"), true},
		{"sender is exclusive", r.IsExclusiveUser("@_irc_bot:example.org"), true},
		{"non-exclusive alias", r.IsExclusiveAlias("#_irc_bridge_chan:example.org"), false},
		{"masquerade namespaced", r.CanMasqueradeAs("@_irc_bridge_bob:example.org"), true},
		{"masquerade outsider", r.CanMasqueradeAs("@bob:example.org"), false},
		{"exclusive owner", set.ExclusiveUserOwner("@_irc_bridge_x:example.org") == r, true},
		{"no exclusive alias owner", set.ExclusiveAliasOwner("#_irc_bridge_chan:example.org") == nil, true},
		{"user query target", set.UserQueryTarget("@_irc_bridge_x:example.org") == r, true},
		{"alias query target", set.AliasQueryTarget("#_irc_bridge_x:example.org") == r, true},
		{"no alias query target", set.AliasQueryTarget("#x:example.org") == nil, true},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestURLNullAndRateLimited(t *testing.T) {
	r, err := Parse("a.yaml", []byte(`
id: a
url: null
as_token: x
hs_token: y
sender_localpart: a
rate_limited: false
namespaces: {}
`), server)
	if err != nil {
		t.Fatal(err)
	}
	if r.HasURL() || r.BaseURL() != "" || r.IsRateLimited() || r.WantsEphemeral() {
		t.Fatalf("%+v", r)
	}
	set, _ := NewSet([]*Registration{r})
	if set.UserQueryTarget("@a:example.org") != nil {
		t.Fatal("an appservice without url is never queried")
	}
}

func reg(id, users string, exclusive bool) string {
	ex := "false"
	if exclusive {
		ex = "true"
	}
	return "id: " + id + "\nurl: http://localhost:1\nas_token: as-" + id + "\nhs_token: hs-" + id +
		"\nsender_localpart: bot_" + id + "\nnamespaces:\n  users:\n    - exclusive: " + ex + "\n      regex: '" + users + "'\n"
}

// Every refusal names the file and the field.
func TestRefusedRegistrations(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		file  string
		field string
	}{
		{"bad regex", map[string]string{"a.yaml": reg("a", "@_a_(.*", true)}, "a.yaml", "namespaces.users[0].regex"},
		{"missing as_token", map[string]string{"a.yaml": "id: a\nurl: null\nhs_token: h\nsender_localpart: a\nnamespaces: {}\n"}, "a.yaml", "as_token"},
		{"missing hs_token", map[string]string{"a.yaml": "id: a\nurl: null\nas_token: h\nsender_localpart: a\nnamespaces: {}\n"}, "a.yaml", "hs_token"},
		{"missing id", map[string]string{"a.yaml": "url: null\nas_token: a\nhs_token: h\nsender_localpart: a\n"}, "a.yaml", "id"},
		{"empty regex", map[string]string{"a.yaml": reg("a", "", true)}, "a.yaml", "namespaces.users[0].regex"},
		{"bad url", map[string]string{"a.yaml": strings.Replace(reg("a", "@_a_.*", true), "http://localhost:1", "ftp://x", 1)}, "a.yaml", "url"},
		{"bad sender", map[string]string{"a.yaml": strings.Replace(reg("a", "@_a_.*", true), "bot_a", "Bot A", 1)}, "a.yaml", "sender_localpart"},
		{"same tokens", map[string]string{"a.yaml": strings.Replace(reg("a", "@_a_.*", true), "hs-a", "as-a", 1)}, "a.yaml", "hs_token"},
		{"not yaml", map[string]string{"a.yaml": "id: [\n"}, "a.yaml", ""},
		{"empty file", map[string]string{"a.yaml": "\n"}, "a.yaml", ""},
		{"duplicate id", map[string]string{"a.yaml": reg("a", "@_a_.*", true),
			"b.yaml": strings.Replace(reg("b", "@_b_.*", true), "id: b", "id: a", 1)}, "b.yaml", "id"},
		{"duplicate as_token", map[string]string{"a.yaml": reg("a", "@_a_.*", true),
			"b.yaml": strings.Replace(reg("b", "@_b_.*", true), "as-b", "as-a", 1)}, "b.yaml", "as_token"},
		{"duplicate hs_token", map[string]string{"a.yaml": reg("a", "@_a_.*", true),
			"b.yaml": strings.Replace(reg("b", "@_b_.*", true), "hs-b", "hs-a", 1)}, "b.yaml", "hs_token"},
		{"as_token is another's hs_token", map[string]string{"a.yaml": reg("a", "@_a_.*", true),
			"b.yaml": strings.Replace(reg("b", "@_b_.*", true), "as-b", "hs-a", 1)}, "b.yaml", "as_token"},
		{"identical exclusive", map[string]string{"a.yaml": reg("a", "@_irc_.*", true), "b.yaml": reg("b", "@_irc_.*", true)},
			"b.yaml", "namespaces.users[0].regex"},
		{"exclusive inside exclusive", map[string]string{"a.yaml": reg("a", "@_irc_.*", true), "b.yaml": reg("b", "@_irc_bob_[a-z]+:example\\.org", true)},
			"b.yaml", "namespaces.users[0].regex"},
		{"wider exclusive after narrower", map[string]string{"a.yaml": reg("a", "@_irc_bob_.*", true), "b.yaml": reg("b", "@_irc_.*", true)},
			"b.yaml", "namespaces.users[0].regex"},
		{"exclusive takes another's sender", map[string]string{"a.yaml": reg("a", "@_a_.*", true), "b.yaml": reg("b", "@bot_a:example\\.org", true)},
			"b.yaml", "namespaces.users"},
		{"unreadable file", map[string]string{}, "missing.yaml", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for _, name := range []string{"a.yaml", "b.yaml"} {
				if body, ok := c.files[name]; ok {
					paths = append(paths, write(t, dir, name, body))
				}
			}
			if len(c.files) == 0 {
				paths = []string{filepath.Join(dir, c.file)}
			}
			_, err := LoadFiles(paths, server)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("not ErrInvalid: %v", err)
			}
			want := filepath.Join(dir, c.file) + ": " + c.field
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		})
	}
}

func TestAllowedOverlaps(t *testing.T) {
	cases := []struct {
		name string
		a, b string
	}{
		{"distinct prefixes", reg("a", "@_irc_.*", true), reg("b", "@_xmpp_.*", true)},
		{"exclusive and non-exclusive", reg("a", "@_irc_.*", true), reg("b", "@.*", false)},
		{"both non-exclusive", reg("a", "@.*", false), reg("b", "@.*", false)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			set, err := LoadFiles([]string{write(t, dir, "a.yaml", c.a), write(t, dir, "b.yaml", c.b)}, server)
			if err != nil || set.Len() != 2 {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestOverlap(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"@_irc_.*", "@_irc_.*", true},
		{"@_irc_.*", "@_irc_alice:example\\.org", true},
		{".*", "#anything", true},
		{"@_(irc|xmpp)_.*", "@_xmpp_[0-9]+", true},
		{"@_irc_.*", "@_slack_.*", false},
		{"@_a_[0-9]{3}", "@_a_0.*", true},
		{"@_a_[0-9]+", "@_a_x.*", false},
		// Documented miss: the two only meet in strings neither's samples hold.
		{"@a.*z", "@.*b.*", false},
	}
	for _, c := range cases {
		a, b := &Namespace{Regex: c.a, Exclusive: true}, &Namespace{Regex: c.b, Exclusive: true}
		r := &Registration{File: "t"}
		r.Namespaces.Users = []Namespace{*a, *b}
		if err := r.check(server); err != nil && !strings.Contains(err.Error(), "sender_localpart") &&
			!strings.Contains(err.Error(), "id") {
			t.Fatal(err)
		}
		got, ok := Overlap(&r.Namespaces.Users[0], &r.Namespaces.Users[1])
		if ok != c.want {
			t.Errorf("Overlap(%q, %q) = %v (%q), want %v", c.a, c.b, ok, got, c.want)
		}
	}
}
