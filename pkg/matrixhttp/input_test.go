package matrixhttp

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestCheckJSONText(t *testing.T) {
	cases := []struct {
		name string
		json string
		want error
	}{
		{"plain", `{"a":"b"}`, nil},
		{"escapes", `{"a":"\" \\ \/ \b \f \n \r \t \u00e9"}`, nil},
		{"escaped backslash before u0000 text", `{"a":"\\u0000"}`, nil},
		{"surrogate pair", `{"a":"\ud83d\ude00"}`, nil},
		{"upper-case surrogate pair", `{"a":"\uD83D\uDE00"}`, nil},
		{"raw non-ASCII", `{"a":"héllo 😀"}`, nil},
		{"escaped NUL", `{"a":"x\u0000"}`, ErrNULCharacter},
		{"escaped NUL in a key", `{"\u0000":1}`, ErrNULCharacter},
		{"invalid UTF-8", "{\"a\":\"\xff\xfe\"}", ErrInvalidUTF8},
		{"truncated UTF-8", "{\"a\":\"\xc3\"}", ErrInvalidUTF8},
		{"lone high surrogate", `{"a":"\ud800"}`, ErrLoneSurrogate},
		{"lone high surrogate before text", `{"a":"\ud800abcdef"}`, ErrLoneSurrogate},
		{"high surrogate then non-surrogate escape", `{"a":"\ud800\u0041"}`, ErrLoneSurrogate},
		{"lone low surrogate", `{"a":"\udc00"}`, ErrLoneSurrogate},
		{"two high surrogates", `{"a":"\ud800\ud800"}`, ErrLoneSurrogate},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := CheckJSONText([]byte(c.json)); !errors.Is(got, c.want) {
				t.Fatalf("CheckJSONText(%q) = %v, want %v", c.json, got, c.want)
			}
		})
	}
}

func TestCheckRequestText(t *testing.T) {
	cases := []struct {
		path, query string
		bad         bool
	}{
		{"/_matrix/client/v3/rooms/%21a%3Ab/event/%24e", "", false},
		{"/_matrix/client/v3/rooms/%21a/event/%24a%00b", "", true},
		{"/_matrix/client/v3/rooms/%21a/event/%24%FF", "", true},
		{"/_matrix/client/v3/sync", "since=s1&filter=%7B%7D", false},
		{"/_matrix/client/v3/sync", "since=a%00", true},
		{"/_matrix/client/v3/sync", "x%00=1", true},
		{"/_matrix/client/v3/sync", "from=%FE", true},
		{"/_matrix/client/v3/rooms/%ZZ", "", true},
	}
	for _, c := range cases {
		q, _ := url.ParseQuery(c.query)
		err := CheckRequestText(c.path, q)
		if (err != nil) != c.bad {
			t.Errorf("CheckRequestText(%q, %q) = %v, want bad=%v", c.path, c.query, err, c.bad)
		}
		if err != nil && (err.ErrCode != "M_INVALID_PARAM" || err.Status != 400) {
			t.Errorf("CheckRequestText(%q, %q) = %d %s, want 400 M_INVALID_PARAM", c.path, c.query, err.Status, err.ErrCode)
		}
	}
}

// FuzzCheckJSONText checks CheckJSONText against what encoding/json makes
// of the same text: accepted text decodes to strings without U+0000 and
// without the U+FFFD that the decoder puts in place of a bad surrogate
// (unless the text spelled U+FFFD itself); text refused for U+0000 decodes
// to a string holding it.
func FuzzCheckJSONText(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `{"a":"\u0000"}`, `{"a":"\ud800"}`, `{"a":"\ud83d\ude00"}`, `["\\u0000"]`, "\"\xff\"", `{"\udc00":[1,"\ud800\udc00"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := CheckJSONText(b)
		if !json.Valid(b) {
			return
		}
		var v any
		if uerr := json.Unmarshal(b, &v); uerr != nil {
			t.Fatalf("json.Valid but Unmarshal failed: %v", uerr)
		}
		strs := collectStrings(v, nil)
		spelledFFFD := strings.Contains(string(b), "\uFFFD") || strings.Contains(strings.ToLower(string(b)), `\ufffd`)
		switch {
		case err == nil:
			for _, s := range strs {
				if strings.ContainsRune(s, 0) {
					t.Fatalf("accepted %q, which decodes to a string with U+0000", b)
				}
				if !spelledFFFD && strings.ContainsRune(s, '\uFFFD') {
					t.Fatalf("accepted %q, which decodes with a replaced surrogate", b)
				}
			}
		case errors.Is(err, ErrNULCharacter):
			found := false
			for _, s := range strs {
				found = found || strings.ContainsRune(s, 0)
			}
			if !found {
				t.Fatalf("refused %q for U+0000, but it decodes without one", b)
			}
		case errors.Is(err, ErrLoneSurrogate):
			found := false
			for _, s := range strs {
				found = found || strings.ContainsRune(s, '\uFFFD')
			}
			if !found {
				t.Fatalf("refused %q for a lone surrogate, but nothing decodes to U+FFFD", b)
			}
		}
	})
}

// collectStrings returns every string, keys included, in a decoded value.
func collectStrings(v any, out []string) []string {
	switch x := v.(type) {
	case string:
		out = append(out, x)
	case []any:
		for _, e := range x {
			out = collectStrings(e, out)
		}
	case map[string]any:
		for k, e := range x {
			out = append(out, k)
			out = collectStrings(e, out)
		}
	}
	return out
}
