package history

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
