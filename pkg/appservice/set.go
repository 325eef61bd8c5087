package appservice

import (
	"errors"
	"fmt"
	"regexp/syntax"
	"sort"
)

// Set is the loaded registrations, checked against each other.
type Set struct {
	list    []*Registration
	byID    map[string]*Registration
	byToken map[string]*Registration
}

// NewSet checks registrations against each other: id, as_token, hs_token
// and sender_localpart are unique; no appservice's sender is in another's
// exclusive users namespace; and no exclusive namespace of one overlaps an
// exclusive namespace of the same kind of another (see Overlap). Errors
// name both files and the field.
func NewSet(regs []*Registration) (*Set, error) {
	s := &Set{byID: map[string]*Registration{}, byToken: map[string]*Registration{}}
	var errs []error
	seen := map[string]map[string]*Registration{"id": {}, "as_token": {}, "hs_token": {}, "sender_localpart": {}}
	for _, r := range regs {
		for field, value := range map[string]string{
			"id": r.ID, "as_token": r.ASToken, "hs_token": r.HSToken, "sender_localpart": r.SenderLocalpart,
		} {
			if other, dup := seen[field][value]; dup {
				errs = append(errs, fileErr(r.File, field, fmt.Errorf("the same as in %s", other.File)))
				continue
			}
			seen[field][value] = r
		}
	}
	// A token is of one kind only: no as_token is another's hs_token.
	for _, r := range regs {
		if other, dup := seen["hs_token"][r.ASToken]; dup && other != r {
			errs = append(errs, fileErr(r.File, "as_token", fmt.Errorf("the same as the hs_token in %s", other.File)))
		}
	}
	for i, a := range regs {
		for _, b := range regs[i+1:] {
			errs = append(errs, exclusiveOverlaps(a, b)...)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.list = append(s.list, regs...)
	sort.Slice(s.list, func(i, j int) bool { return s.list[i].ID < s.list[j].ID })
	for _, r := range s.list {
		s.byID[r.ID] = r
		s.byToken[r.ASToken] = r
	}
	return s, nil
}

func exclusiveOverlaps(a, b *Registration) []error {
	var errs []error
	for _, pair := range [][2]*Registration{{a, b}, {b, a}} {
		x, y := pair[0], pair[1]
		if x.sender != "" && anyMatch(y.Namespaces.Users, string(x.sender), true) {
			errs = append(errs, fileErr(y.File, "namespaces.users",
				fmt.Errorf("an exclusive namespace holds %s, the sender of %s", x.sender, x.File)))
		}
	}
	for _, k := range []struct {
		name string
		a, b []Namespace
	}{
		{"users", a.Namespaces.Users, b.Namespaces.Users},
		{"aliases", a.Namespaces.Aliases, b.Namespaces.Aliases},
		{"rooms", a.Namespaces.Rooms, b.Namespaces.Rooms},
	} {
		for i := range k.a {
			for j := range k.b {
				na, nb := &k.a[i], &k.b[j]
				if !na.Exclusive || !nb.Exclusive {
					continue
				}
				if example, ok := Overlap(na, nb); ok {
					errs = append(errs, fileErr(b.File, fmt.Sprintf("namespaces.%s[%d].regex", k.name, j),
						fmt.Errorf("exclusive %q overlaps the exclusive namespaces.%s[%d].regex %q of %s (both match %q)",
							nb.Regex, k.name, i, na.Regex, a.File, example)))
				}
			}
		}
	}
	return errs
}

// Overlap reports whether two namespaces are seen to share an ID, and one
// such ID. Regexes are not compared in general (deciding whether two
// regexes intersect is costly); instead each regex yields a set of sample
// strings it matches (shortest forms: x* and x? taken zero and one time,
// x+ once, each alternative, the first characters of each class) and the
// namespaces overlap when either matches one of the other's samples. This
// catches identical regexes, one namespace inside another ("@_irc_.*" and
// "@_irc_bob_.*", ".*" and anything) and literal IDs inside a pattern. It
// misses patterns that only meet in strings neither's samples contain,
// such as "@a.*z" and "@.*b.*" (both match "@abz").
func Overlap(a, b *Namespace) (string, bool) {
	if a.re == nil || b.re == nil {
		return "", false
	}
	if a.Regex == b.Regex {
		return a.Regex, true
	}
	for _, pair := range [][2]*Namespace{{a, b}, {b, a}} {
		for _, s := range samples(pair[0].Regex) {
			if pair[1].Matches(s) {
				return s, true
			}
		}
	}
	return "", false
}

// maxSamples bounds the sample strings of one regex.
const maxSamples = 256

// samples returns strings the regex matches (as a whole), at most
// maxSamples of them.
func samples(expr string) []string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil
	}
	return sampleOf(re.Simplify())
}

func sampleOf(re *syntax.Regexp) []string {
	switch re.Op {
	case syntax.OpLiteral:
		return []string{string(re.Rune)}
	case syntax.OpCharClass:
		var out []string
		for i := 0; i+1 < len(re.Rune) && len(out) < 4; i += 2 {
			out = append(out, string(re.Rune[i]))
			if re.Rune[i+1] != re.Rune[i] {
				out = append(out, string(re.Rune[i+1]))
			}
		}
		return out
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return []string{"a", "_", "0", ":"}
	case syntax.OpCapture:
		return sampleOf(re.Sub[0])
	case syntax.OpStar, syntax.OpQuest:
		return append([]string{""}, sampleOf(re.Sub[0])...)
	case syntax.OpPlus:
		return sampleOf(re.Sub[0])
	case syntax.OpRepeat:
		one := sampleOf(re.Sub[0])
		out := []string{""}
		for i := 0; i < re.Min; i++ {
			out = product(out, one)
		}
		return out
	case syntax.OpConcat:
		out := []string{""}
		for _, sub := range re.Sub {
			out = product(out, sampleOf(sub))
		}
		return out
	case syntax.OpAlternate:
		var out []string
		for _, sub := range re.Sub {
			out = append(out, sampleOf(sub)...)
		}
		if len(out) > maxSamples {
			out = out[:maxSamples]
		}
		return out
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return []string{""}
	}
	return nil
}

func product(heads, tails []string) []string {
	var out []string
	for _, h := range heads {
		for _, t := range tails {
			if len(out) == maxSamples {
				return out
			}
			out = append(out, h+t)
		}
	}
	return out
}

// List is every registration, by ID.
func (s *Set) List() []*Registration {
	if s == nil {
		return nil
	}
	return s.list
}

// Len is the number of registrations.
func (s *Set) Len() int { return len(s.List()) }

// ByID is the registration of an appservice ID (nil when none).
func (s *Set) ByID(id string) *Registration {
	if s == nil {
		return nil
	}
	return s.byID[id]
}

// ByASToken is the registration whose as_token this is (nil when none).
func (s *Set) ByASToken(token string) *Registration {
	if s == nil || token == "" {
		return nil
	}
	return s.byToken[token]
}

// ExclusiveUserOwner is the appservice that holds the user exclusively
// (its sender or an exclusive users namespace), or nil.
func (s *Set) ExclusiveUserOwner(userID string) *Registration {
	for _, r := range s.List() {
		if r.IsExclusiveUser(userID) {
			return r
		}
	}
	return nil
}

// ExclusiveAliasOwner is the appservice that holds the alias exclusively,
// or nil.
func (s *Set) ExclusiveAliasOwner(alias string) *Registration {
	for _, r := range s.List() {
		if r.IsExclusiveAlias(alias) {
			return r
		}
	}
	return nil
}

// UserQueryTarget is the appservice to ask about an unknown user: the
// first whose users namespaces hold the user (exclusive ones first) and
// that has a URL; nil when none.
func (s *Set) UserQueryTarget(userID string) *Registration {
	return s.queryTarget(func(r *Registration, exclusive bool) bool {
		return anyMatch(r.Namespaces.Users, userID, exclusive) && isLocal(userID, r.sender.Homeserver())
	})
}

// AliasQueryTarget is the appservice to ask about an unknown alias, as
// UserQueryTarget.
func (s *Set) AliasQueryTarget(alias string) *Registration {
	return s.queryTarget(func(r *Registration, exclusive bool) bool {
		return anyMatch(r.Namespaces.Aliases, alias, exclusive)
	})
}

func (s *Set) queryTarget(match func(*Registration, bool) bool) *Registration {
	for _, exclusive := range []bool{true, false} {
		for _, r := range s.List() {
			if r.HasURL() && match(r, exclusive) {
				return r
			}
		}
	}
	return nil
}

// ByProtocol lists the appservices that provide a third-party protocol.
func (s *Set) ByProtocol(protocol string) []*Registration {
	var out []*Registration
	for _, r := range s.List() {
		for _, p := range r.Protocols {
			if p == protocol {
				out = append(out, r)
				break
			}
		}
	}
	return out
}
