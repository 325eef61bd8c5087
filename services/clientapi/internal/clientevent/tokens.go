package clientevent

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// StreamToken is a position in the client-API's event stream: the point
// just after the event stored at pos. The same format serves as /sync's
// since/next_batch, a timeline's prev_batch and /messages' from/to/start/
// end, so all of them interoperate.
//
// /sync tokens also carry epos, the presence service's ephemeral position
// (typing, receipts, presence), apos, the user's account data position,
// dpos, the device's send-to-device position, and kpos, the device list
// position (internal/keys): "s<pos>_e<epos>_a<apos>_d<dpos>_k<kpos>".
// A missing part (older tokens, pagination
// tokens) parses as 0, which makes the next sync send that data in full,
// as an initial sync would.
type StreamToken struct {
	Pos  int64
	EPos int64
	APos int64
	DPos int64
	KPos int64
}

func (t StreamToken) String() string {
	s := "s" + strconv.FormatInt(t.Pos, 10)
	if t.EPos > 0 {
		s += "_e" + strconv.FormatInt(t.EPos, 10)
	}
	if t.APos > 0 {
		s += "_a" + strconv.FormatInt(t.APos, 10)
	}
	if t.DPos > 0 {
		s += "_d" + strconv.FormatInt(t.DPos, 10)
	}
	if t.KPos > 0 {
		s += "_k" + strconv.FormatInt(t.KPos, 10)
	}
	return s
}

// ParseStreamToken parses "s<pos>" with optional "_<component>"s: "e<n>"
// is the ephemeral position, "a<n>" the account data position, "d<n>" the
// send-to-device position, "k<n>" the device list position; unknown
// components are ignored so that later versions may add more.
func ParseStreamToken(s string) (StreamToken, error) {
	body, ok := strings.CutPrefix(s, "s")
	if !ok {
		return StreamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
	}
	parts := strings.Split(body, "_")
	// The event position may be negative: backfilled history sits before
	// every room's first event (store/outofroom.go).
	pos, ok := parsePosition(strings.TrimPrefix(parts[0], "-"))
	if strings.HasPrefix(parts[0], "-") {
		pos = -pos
	}
	if !ok {
		return StreamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
	}
	t := StreamToken{Pos: pos}
	for _, part := range parts[1:] {
		var field *int64
		switch {
		case strings.HasPrefix(part, "e"):
			field = &t.EPos
		case strings.HasPrefix(part, "a"):
			field = &t.APos
		case strings.HasPrefix(part, "d"):
			field = &t.DPos
		case strings.HasPrefix(part, "k"):
			field = &t.KPos
		default:
			continue
		}
		if *field, ok = parsePosition(part[1:]); !ok {
			return StreamToken{}, fmt.Errorf("%w: %q", ErrInvalidToken, s)
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

// accountDataPos is the account data position of a since token (0 for an
// initial sync).
func (t *StreamToken) AccountDataPos() int64 {
	if t == nil {
		return 0
	}
	return t.APos
}

// toDevicePos is the send-to-device position of a since token (0 for an
// initial sync).
func (t *StreamToken) ToDevicePos() int64 {
	if t == nil {
		return 0
	}
	return t.DPos
}

// Sentinel errors of this package.
var (
	// ErrInvalidToken is a malformed sync or pagination token.
	ErrInvalidToken = errors.New("invalid stream token")
)
