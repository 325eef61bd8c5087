package federation

import (
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib"
)

// DecodeProtoEvent decodes a proto-event from JSON (a make_join or
// make_leave template, a build request). JSON gives prev_events and
// auth_events as []any; gomatrixserverlib's EventBuilder handles []string
// (room versions 3 and up) and reference lists (1 and 2), so lists of
// strings become []string and anything else stays as it is.
func DecodeProtoEvent(raw []byte) (*gomatrixserverlib.ProtoEvent, error) {
	var pe gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(raw, &pe); err != nil {
		return nil, err
	}
	pe.PrevEvents, pe.AuthEvents = stringList(pe.PrevEvents), stringList(pe.AuthEvents)
	return &pe, nil
}

func stringList(v any) any {
	list, ok := v.([]any)
	if !ok {
		return v
	}
	out := make([]string, len(list))
	for i, x := range list {
		if out[i], ok = x.(string); !ok {
			return v
		}
	}
	return out
}
