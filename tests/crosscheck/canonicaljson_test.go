//go:build goexperiment.jsonv2 || go1.27

package crosscheck

import (
	"bytes"
	"encoding/json"
	"encoding/json/jsontext"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix/crypto/canonicaljson"
)

// canonicalSeeds are JSON texts at the edges of the spec's canonical JSON
// (appendices, "Canonical JSON"): key order by code point (not UTF-16),
// escapes that must become UTF-8, control characters, the integer range
// of room versions 6 and later, and the number forms that are not
// integers.
var canonicalSeeds = []string{
	`{"b":1,"a":[true,false,null],"c":{"z":"","y":-0}}`,
	`{"\ud83d\ude00":1,"\uffff":2,"\u00e9":3,"e":4}`,
	`{"a":"\u00e9\u0001\u001f\"\\\/\b\f\n\r\t"}`,
	`{"n":9007199254740991,"m":-9007199254740991}`,
	`{"n":9007199254740992}`,
	`{"n":1.5}`, `{"n":1e2}`, `{"n":1E2}`, `{"n":-0}`, `{"n":0.0}`, `{"n":10}`,
	`{"a":1,"a":2}`,
	"{\"a\":\"\xff\"}",
	` [ 1 , { "b" : [ ] , "a" : { } } ] `,
	`"\u2028\u2029"`,
}

// canonicalInScope reports whether b is JSON that both libraries are meant
// to canonicalise: valid UTF-8 syntax without duplicate object keys (the
// spec's canonical JSON has no meaning for either; mautrix refuses them,
// gomatrixserverlib passes them through, and the room-server never sees
// them because the client-API decodes bodies into Go values first).
func canonicalInScope(b []byte) bool {
	if !utf8.Valid(b) || !json.Valid(b) {
		return false
	}
	return jsontext.Value(bytes.Clone(b)).IsValid(jsontext.AllowDuplicateNames(false))
}

// FuzzCanonicalJSON checks gomatrixserverlib's canonical JSON, which the
// room-server uses to hash, sign and redact events
// (EnforcedCanonicalJSON), against mautrix's independent encoding/json/v2
// implementation: where both accept a text they must give the same bytes,
// and the result must hold the same values as the input, be its own
// canonical form, and be accepted again. Where only one library accepts,
// the difference must be one of the listed, understood ones.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range canonicalSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if !canonicalInScope(in) || controlInKey(in) {
			return
		}
		g, gerr := gomatrixserverlib.EnforcedCanonicalJSON(in, gomatrixserverlib.RoomVersionV10)
		m := jsontext.Value(bytes.Clone(in))
		merr := canonicaljson.Canonicalize(&m)
		if gerr == nil {
			var a, b any
			if err := decodeNumbers(in, &a); err != nil {
				t.Fatal(err)
			}
			if err := decodeNumbers(g, &b); err != nil {
				t.Fatalf("canonical form %q of %q is not JSON: %v", g, in, err)
			}
			if !reflect.DeepEqual(a, b) && !numbersOnlyRespelled(a, b) {
				t.Fatalf("canonical form %q of %q holds other values", g, in)
			}
			again, err := gomatrixserverlib.EnforcedCanonicalJSON(g, gomatrixserverlib.RoomVersionV10)
			if err != nil || !bytes.Equal(again, g) {
				t.Fatalf("canonical form %q of %q is not its own canonical form (%q, %v)", g, in, again, err)
			}
		}
		// Both libraries agree on every text whose numbers are plain
		// integers. On other number spellings they differ (see
		// hasRespelledNumber); the room-server refuses such content before
		// it builds an event (roomserver's checkIntegers, tested by
		// TestParseTemplateNumbers and FuzzEventTemplate).
		if hasRespelledNumber(in) {
			return
		}
		switch {
		case gerr == nil && merr == nil:
			if !bytes.Equal(g, m) {
				t.Fatalf("%q: gomatrixserverlib %q, mautrix %q", in, g, m)
			}
		case gerr != nil && merr != nil:
		case gerr == nil:
			t.Fatalf("%q: gomatrixserverlib accepts (%q), mautrix refuses: %v", in, g, merr)
		default:
			t.Fatalf("%q: mautrix accepts (%q), gomatrixserverlib refuses: %v", in, m, gerr)
		}
	})
}

// controlInKey reports whether an object key of b holds a control
// character (U+0000–U+001F). gomatrixserverlib's canonical form writes
// such a key's escape (\b, \u0001) as the raw character, which is not
// JSON (found by this fuzz test; testdata/fuzz/FuzzCanonicalJSON). Its
// event builder then fails, so no such event is signed, and the
// room-server refuses the content first (roomserver's parseTemplate,
// TestParseTemplateNumbers).
func controlInKey(b []byte) bool {
	var v any
	if decodeNumbers(b, &v) != nil {
		return false
	}
	var walk func(any) bool
	walk = func(v any) bool {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if strings.IndexFunc(k, func(r rune) bool { return r < 0x20 }) >= 0 || walk(e) {
					return true
				}
			}
		case []any:
			for _, e := range x {
				if walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(v)
}

func decodeNumbers(b []byte, v *any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

// numbersOnlyRespelled reports whether a and b differ only in how numbers
// of equal value are spelled.
func numbersOnlyRespelled(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		fx, ex := x.Float64()
		fy, ey := y.Float64()
		return ex == nil && ey == nil && fx == fy
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !numbersOnlyRespelled(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k := range x {
			if !numbersOnlyRespelled(x[k], y[k]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

// hasRespelledNumber reports whether b holds a number not written as a
// plain integer (1E2, 1e2, 0.0, -0, 1.5). There the libraries differ:
// mautrix rewrites integral values to their integer spelling (1e2 → 100,
// -0 → 0) and refuses fractions; gomatrixserverlib refuses a lower-case
// exponent, a fraction of non-zero value and -0, but passes 1E2 and 0.0
// through unchanged.
func hasRespelledNumber(b []byte) bool {
	dec := jsontext.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := dec.ReadToken()
		if err != nil {
			return false
		}
		if tok.Kind() == '0' && !plainInteger.MatchString(tok.String()) {
			return true
		}
	}
}

var plainInteger = regexp.MustCompile(`^(0|-?[1-9][0-9]*)$`)

// TestCanonicalJSONKnownForms pins what both libraries make of the forms
// the spec spells out, so a change in either shows here.
func TestCanonicalJSONKnownForms(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`},
		{`{"one":1,"two":"Two"}`, `{"one":1,"two":"Two"}`},
		{`{"a":"日本語"}`, `{"a":"日本語"}`},
		{`{"a":"\u65E5"}`, `{"a":"日"}`},
		{`{"本":2,"日":1}`, `{"日":1,"本":2}`},
		{`{"a":null}`, `{"a":null}`},
		{`{"a":"\u0000"}`, `{"a":"\u0000"}`},
		{`{"\ud83d\ude00":1,"\uffff":2}`, "{\"\uffff\":2,\"😀\":1}"}, // code point order, not UTF-16's
	}
	for _, c := range cases {
		g, err := gomatrixserverlib.EnforcedCanonicalJSON([]byte(c.in), gomatrixserverlib.RoomVersionV10)
		if err != nil || string(g) != c.want {
			t.Errorf("gomatrixserverlib %s: %s, %v; want %s", c.in, g, err, c.want)
		}
		m := jsontext.Value(c.in)
		if err := canonicaljson.Canonicalize(&m); err != nil || string(m) != c.want {
			t.Errorf("mautrix %s: %s, %v; want %s", c.in, m, err, c.want)
		}
	}
}
