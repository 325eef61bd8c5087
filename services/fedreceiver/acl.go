package fedreceiver

// Server ACLs (m.room.server_acl), enforced on every room-scoped endpoint
// and on each PDU and room EDU of /send, by the rules of the event's
// schema: no ACL allows; an IP literal is denied when allow_ip_literals
// is false; a deny match denies; an allow match allows; anything else is
// denied. Globs are the spec's (case-insensitive, '*' and '?'), matched
// against the server name without its port.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.mau.fi/util/glob"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// serverACL is a parsed m.room.server_acl content.
type serverACL struct {
	allow, deny     []glob.Glob
	allowIPLiterals bool
}

// parseServerACL reads an ACL's content. Entries that are not strings are
// ignored; allow_ip_literals is true unless it is the boolean false.
func parseServerACL(content []byte) serverACL {
	var c struct {
		Allow           []any `json:"allow"`
		Deny            []any `json:"deny"`
		AllowIPLiterals any   `json:"allow_ip_literals"`
	}
	_ = json.Unmarshal(content, &c)
	acl := serverACL{allowIPLiterals: true}
	if b, ok := c.AllowIPLiterals.(bool); ok {
		acl.allowIPLiterals = b
	}
	compile := func(list []any) []glob.Glob {
		var out []glob.Glob
		for _, v := range list {
			if p, ok := v.(string); ok {
				if g := glob.Compile(p); g != nil {
					out = append(out, g)
				}
			}
		}
		return out
	}
	acl.allow, acl.deny = compile(c.Allow), compile(c.Deny)
	return acl
}

// allows applies the ACL to a server name.
func (a serverACL) allows(server spec.ServerName) bool {
	host, _, ok := spec.ParseAndValidateServerName(server)
	if !ok {
		return false
	}
	h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(h); err == nil && !a.allowIPLiterals {
		return false
	}
	for _, g := range a.deny {
		if g.Match(host) {
			return false
		}
	}
	for _, g := range a.allow {
		if g.Match(host) {
			return true
		}
	}
	return false
}

// roomACL returns the room's current ACL, or nil when it has none (or the
// room is unknown).
func (s *Service) roomACL(ctx context.Context, roomID string) (*serverACL, error) {
	resp, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID,
		Filter: []*roomserverv1.StateKeyTuple{{Type: "m.room.server_acl", StateKey: ""}}})
	if err != nil {
		return nil, fmt.Errorf("QueryState (server ACL): %w", err)
	}
	for _, ev := range resp.GetState() {
		var e struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(ev.GetEventJson(), &e) == nil {
			acl := parseServerACL(e.Content)
			return &acl, nil
		}
	}
	return nil, nil
}

// checkACL returns errACLDenied when the room's ACL denies server.
func (s *Service) checkACL(ctx context.Context, roomID string, server spec.ServerName) error {
	acl, err := s.roomACL(ctx, roomID)
	if err != nil {
		return err
	}
	if acl != nil && !acl.allows(server) {
		return fmt.Errorf("%w: %s in %s", errACLDenied, server, roomID)
	}
	return nil
}

// aclCache remembers verdicts for one request (a transaction's PDUs and
// EDUs often share rooms).
type aclCache struct {
	s       *Service
	server  spec.ServerName
	verdict map[string]error
}

func (s *Service) newACLCache(server spec.ServerName) *aclCache {
	return &aclCache{s: s, server: server, verdict: map[string]error{}}
}

// check is checkACL, cached per room. Failures to ask are not cached.
func (c *aclCache) check(ctx context.Context, roomID string) error {
	if v, ok := c.verdict[roomID]; ok {
		return v
	}
	err := c.s.checkACL(ctx, roomID, c.server)
	if err == nil || errorsIsACL(err) {
		c.verdict[roomID] = err
	}
	return err
}
