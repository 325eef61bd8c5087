package clientapi

import "testing"

func TestBuildTSQuery(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"   ", ""},
		{"martians", "'martians':*"},
		{"martians and men", "'martians':* & 'and':* & 'men':*"},
		{`"little green" men`, "'little green' & 'men':*"},
		{"cats or dogs", "'cats':* | 'dogs':*"},
		{"or cats", "'cats':*"},
		{"cats -dogs", "'cats':* & !'dogs'"},
		{`it's a\b`, `'it''s':* & 'a\\b':*`},
		{`"unterminated phrase`, "'unterminated phrase'"},
		{`""`, ""},
	} {
		if got := buildTSQuery(c.in); got != c.want {
			t.Errorf("buildTSQuery(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestSearchTextOf(t *testing.T) {
	for _, c := range []struct{ typ, content, key, text string }{
		{"m.room.message", `{"msgtype":"m.text","body":"hello"}`, keyBody, "hello"},
		{"m.room.message", `{"body":42}`, "", ""},
		{"m.room.message", `{"body":"  "}`, "", ""},
		{"m.room.name", `{"name":"HQ"}`, keyName, "HQ"},
		{"m.room.topic", `{"topic":"plain","m.topic":{"m.text":[{"mimetype":"text/html","body":"<b>x</b>"},{"body":"rich"}]}}`, keyTopic, "plain\nrich"},
		{"m.room.encrypted", `{"ciphertext":"abc","body":"no"}`, "", ""},
		{"m.room.message", `not json`, "", ""},
	} {
		key, text := searchTextOf(c.typ, []byte(c.content))
		if key != c.key || text != c.text {
			t.Errorf("searchTextOf(%s, %s) = %q %q, want %q %q", c.typ, c.content, key, text, c.key, c.text)
		}
	}
}
