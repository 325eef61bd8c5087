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
type streamToken struct {
	pos int64
}

func (t streamToken) String() string { return "s" + strconv.FormatInt(t.pos, 10) }

// parseStreamToken parses "s<pos>". Unknown suffixes after '_' are ignored
// so that later versions may add components.
func parseStreamToken(s string) (streamToken, error) {
	body, ok := strings.CutPrefix(s, "s")
	if !ok {
		return streamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
	}
	body, _, _ = strings.Cut(body, "_")
	pos, err := strconv.ParseInt(body, 10, 64)
	if err != nil || pos < 0 || strings.HasPrefix(body, "+") {
		return streamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
	}
	return streamToken{pos: pos}, nil
}
