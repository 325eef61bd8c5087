package clientapi

import (
	"fmt"
	"strconv"
	"strings"
)

// streamToken is a position in the client-API's event stream: the point
// just after the event stored at pos. The same format serves as /sync's
// since/next_batch, a timeline's prev_batch and /messages' from/to/start/
// end, so all of them interoperate.
//
// /sync tokens also carry epos, the presence service's ephemeral position
// (typing, receipts, presence): "s<pos>_e<epos>". Tokens without it (older
// tokens, and pagination tokens) parse with epos 0, which makes the next
// sync send the current ephemeral data, as an initial sync would.
type streamToken struct {
	pos  int64
	epos int64
}

func (t streamToken) String() string {
	s := "s" + strconv.FormatInt(t.pos, 10)
	if t.epos > 0 {
		s += "_e" + strconv.FormatInt(t.epos, 10)
	}
	return s
}

// parseStreamToken parses "s<pos>" with optional "_<component>"s: "e<n>"
// is the ephemeral position; unknown components are ignored so that later
// versions may add more.
func parseStreamToken(s string) (streamToken, error) {
	body, ok := strings.CutPrefix(s, "s")
	if !ok {
		return streamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
	}
	parts := strings.Split(body, "_")
	pos, ok := parsePosition(parts[0])
	if !ok {
		return streamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
	}
	t := streamToken{pos: pos}
	for _, part := range parts[1:] {
		if v, isE := strings.CutPrefix(part, "e"); isE {
			if t.epos, ok = parsePosition(v); !ok {
				return streamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
			}
		}
	}
	return t, nil
}

// parsePosition parses a non-negative decimal position.
func parsePosition(v string) (int64, bool) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || strings.HasPrefix(v, "+") {
		return 0, false
	}
	return n, true
}
