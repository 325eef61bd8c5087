package clientevent

import "encoding/json"

const (
	RelThread    = "m.thread"
	RelReference = "m.reference"
	RelReplace   = "m.replace"
)

// RelationOf reads content."m.relates_to" of an event's content.
func RelationOf(content []byte) (eventID, relType string) {
	var c struct {
		RelatesTo *struct {
			EventID string `json:"event_id"`
			RelType string `json:"rel_type"`
		} `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || c.RelatesTo == nil {
		return "", ""
	}
	return c.RelatesTo.EventID, c.RelatesTo.RelType
}

// BundledRelTypes are the relation types aggregated in unsigned."m.relations".
var BundledRelTypes = []string{RelThread, RelReference, RelReplace}
