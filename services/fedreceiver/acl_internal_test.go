package fedreceiver

import (
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestServerACLRules checks the m.room.server_acl rules of the spec on
// server names: IP literals, globs ('*', '?'), case, ports.
func TestServerACLRules(t *testing.T) {
	for _, c := range []struct {
		content string
		server  string
		allowed bool
	}{
		{`{"allow":["*"]}`, "example.org", true},
		{`{}`, "example.org", false}, // no allow list denies everyone
		{`{"allow":["*"],"deny":["evil.com"]}`, "evil.com", false},
		{`{"allow":["*"],"deny":["evil.com"]}`, "evil.com:8448", false}, // ports are ignored
		{`{"allow":["*"],"deny":["evil.com"]}`, "EVIL.com", false},      // case-insensitive
		{`{"allow":["*"],"deny":["evil.com"]}`, "notevil.com", true},
		{`{"allow":["*"],"deny":["*.evil.com"]}`, "a.evil.com", false},
		{`{"allow":["*"],"deny":["*.evil.com"]}`, "evil.com", true},
		{`{"allow":["ex?mple.org"]}`, "example.org", true},
		{`{"allow":["ex?mple.org"]}`, "exaample.org", false},
		{`{"allow":["*.example.org"]}`, "example.org", false},
		{`{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4", false},
		{`{"allow":["*"],"allow_ip_literals":false}`, "[::1]:8448", false},
		{`{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4.example", true},
		{`{"allow":["*"]}`, "1.2.3.4", true},                          // allow_ip_literals defaults to true
		{`{"allow":["*"],"allow_ip_literals":"no"}`, "1.2.3.4", true}, // not a boolean: true
		{`{"allow":["*"],"deny":[1, null, "x.org"]}`, "x.org", false}, // non-strings ignored
		{`{"allow":"*"}`, "example.org", false},                       // not a list: no allow list
		{`{"allow":["1.2.3.*"],"deny":[]}`, "1.2.3.4:99", true},
		{`{"allow":["*"]}`, "not a server name!", false},
	} {
		acl := parseServerACL([]byte(c.content))
		if got := acl.allows(spec.ServerName(c.server)); got != c.allowed {
			t.Errorf("%s for %s: allowed %t, want %t", c.content, c.server, got, c.allowed)
		}
	}
}
