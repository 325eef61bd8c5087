// Package appservice holds application service registrations (the
// spec's registration files, in YAML): loading and validating them at
// start, and the namespace matching that the appservice service (which
// events each appservice gets) and the client-API (as_token
// authentication, user_id assertion, M_EXCLUSIVE) both need.
//
// Namespace regexes must match the whole ID: "@_irc_.*" is compiled as
// ^(?:@_irc_.*)$. A registration is read once, at start; changing a file
// needs a restart.
package appservice

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"
)

// Sentinel errors.
var (
	// ErrInvalid wraps every refusal of a registration file.
	ErrInvalid = errors.New("invalid application service registration")
)

// Registration is one application service's registration file.
type Registration struct {
	// ID is unique among the registrations and never changes.
	ID string `yaml:"id"`
	// URL is where the homeserver reaches the appservice; nil (url: null)
	// when it wants no traffic.
	URL             *string `yaml:"url"`
	ASToken         string  `yaml:"as_token"`
	HSToken         string  `yaml:"hs_token"`
	SenderLocalpart string  `yaml:"sender_localpart"`
	Namespaces      struct {
		Users   []Namespace `yaml:"users"`
		Aliases []Namespace `yaml:"aliases"`
		Rooms   []Namespace `yaml:"rooms"`
	} `yaml:"namespaces"`
	// RateLimited: whether masqueraded users are rate-limited (the
	// sender never is). Absent means true.
	RateLimited *bool    `yaml:"rate_limited"`
	Protocols   []string `yaml:"protocols"`
	// ReceiveEphemeral (spec v1.13): typing, receipts and presence in
	// transactions. The MSC2409 key older bridges write means the same.
	ReceiveEphemeral     bool `yaml:"receive_ephemeral"`
	MSC2409PushEphemeral bool `yaml:"de.sorunome.msc2409.push_ephemeral"`

	// File is the path the registration was read from.
	File string `yaml:"-"`

	sender id.UserID
}

// Namespace is one entry of a namespace list.
type Namespace struct {
	Exclusive bool   `yaml:"exclusive"`
	Regex     string `yaml:"regex"`

	re *regexp.Regexp
}

// Matches reports whether the whole of s matches the namespace.
func (n *Namespace) Matches(s string) bool { return n.re != nil && n.re.MatchString(s) }

// HasURL reports whether the appservice wants traffic.
func (r *Registration) HasURL() bool { return r.URL != nil && *r.URL != "" }

// BaseURL is the URL without a trailing slash ("" when none).
func (r *Registration) BaseURL() string {
	if !r.HasURL() {
		return ""
	}
	return strings.TrimRight(*r.URL, "/")
}

// SenderUserID is the appservice's own user, @sender_localpart:server.
func (r *Registration) SenderUserID() id.UserID { return r.sender }

// IsRateLimited reports whether masqueraded users are rate-limited.
func (r *Registration) IsRateLimited() bool { return r.RateLimited == nil || *r.RateLimited }

// WantsEphemeral reports whether typing, receipts and presence go in its
// transactions.
func (r *Registration) WantsEphemeral() bool { return r.ReceiveEphemeral || r.MSC2409PushEphemeral }

// IsInterestedInUser reports whether the user is the appservice's sender
// or matches its users namespaces. Only users of this server can match
// (the spec's note on the users namespace); serverName is this server's.
func (r *Registration) IsInterestedInUser(userID string) bool {
	if userID == string(r.sender) {
		return true
	}
	if !isLocal(userID, r.sender.Homeserver()) {
		return false
	}
	return anyMatch(r.Namespaces.Users, userID, false)
}

// IsInterestedInRoom reports whether the room ID matches its rooms
// namespaces.
func (r *Registration) IsInterestedInRoom(roomID string) bool {
	return anyMatch(r.Namespaces.Rooms, roomID, false)
}

// IsInterestedInAlias reports whether the alias matches its aliases
// namespaces.
func (r *Registration) IsInterestedInAlias(alias string) bool {
	return anyMatch(r.Namespaces.Aliases, alias, false)
}

// IsExclusiveUser reports whether the user is the sender or in one of its
// exclusive users namespaces.
func (r *Registration) IsExclusiveUser(userID string) bool {
	return userID == string(r.sender) || anyMatch(r.Namespaces.Users, userID, true)
}

// IsExclusiveAlias reports whether the alias is in one of its exclusive
// aliases namespaces.
func (r *Registration) IsExclusiveAlias(alias string) bool {
	return anyMatch(r.Namespaces.Aliases, alias, true)
}

// CanMasqueradeAs reports whether the appservice may act as the user
// (user_id assertion): its sender, or a local user of its users
// namespaces.
func (r *Registration) CanMasqueradeAs(userID string) bool { return r.IsInterestedInUser(userID) }

func anyMatch(list []Namespace, s string, exclusiveOnly bool) bool {
	for i := range list {
		if (!exclusiveOnly || list[i].Exclusive) && list[i].Matches(s) {
			return true
		}
	}
	return false
}

func isLocal(userID, serverName string) bool {
	_, server, ok := strings.Cut(userID, ":")
	return ok && strings.HasPrefix(userID, "@") && server == serverName
}

// Parse decodes one registration file's bytes and checks it on its own
// (file names it in errors). Unknown keys are ignored: bridges write
// unstable keys of their own (MSC extensions).
func Parse(file string, data []byte, serverName string) (*Registration, error) {
	var r Registration
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fileErr(file, "", errors.New("the file is empty"))
	}
	if err := yaml.Unmarshal(data, &r); err != nil {
		return nil, fileErr(file, "", fmt.Errorf("not a YAML registration: %v", err))
	}
	r.File = file
	if err := r.check(serverName); err != nil {
		return nil, err
	}
	return &r, nil
}

// check validates one registration and compiles its regexes.
func (r *Registration) check(serverName string) error {
	var errs []error
	bad := func(field string, err error) { errs = append(errs, fileErr(r.File, field, err)) }
	for _, f := range []struct{ name, value string }{
		{"id", r.ID}, {"as_token", r.ASToken}, {"hs_token", r.HSToken}, {"sender_localpart", r.SenderLocalpart},
	} {
		if strings.TrimSpace(f.value) == "" {
			bad(f.name, errors.New("missing or empty"))
		}
	}
	if r.ASToken != "" && r.ASToken == r.HSToken {
		bad("hs_token", errors.New("must differ from as_token"))
	}
	if r.URL != nil && *r.URL != "" {
		u, err := url.Parse(*r.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("url", fmt.Errorf("%q is not an http(s) URL (use null for no traffic)", *r.URL))
		}
	}
	if r.SenderLocalpart != "" {
		r.sender = id.NewUserID(r.SenderLocalpart, serverName)
		if err := id.ValidateUserLocalpart(r.SenderLocalpart); err != nil {
			bad("sender_localpart", err)
		}
	}
	for _, l := range []struct {
		name string
		list []Namespace
	}{{"users", r.Namespaces.Users}, {"aliases", r.Namespaces.Aliases}, {"rooms", r.Namespaces.Rooms}} {
		for i := range l.list {
			field := fmt.Sprintf("namespaces.%s[%d].regex", l.name, i)
			n := &l.list[i]
			if n.Regex == "" {
				bad(field, errors.New("missing or empty"))
				continue
			}
			re, err := regexp.Compile("^(?:" + n.Regex + ")$")
			if err != nil {
				bad(field, fmt.Errorf("bad regex %q: %v", n.Regex, err))
				continue
			}
			n.re = re
		}
	}
	return errors.Join(errs...)
}

func fileErr(file, field string, err error) error {
	if field == "" {
		return fmt.Errorf("%w %s: %w", ErrInvalid, file, err)
	}
	return fmt.Errorf("%w %s: %s: %w", ErrInvalid, file, field, err)
}

// LoadFiles reads and checks every registration file, then checks them
// against each other (Set). serverName is this server's.
func LoadFiles(paths []string, serverName string) (*Set, error) {
	var regs []*Registration
	var errs []error
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fileErr(p, "", err))
			continue
		}
		r, err := Parse(p, data, serverName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		regs = append(regs, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return NewSet(regs)
}
