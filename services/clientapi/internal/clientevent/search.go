package clientevent

import (
	"encoding/json"
	"strings"
)

// Search keys and the event types they index.
const (
	SearchKeyBody  = "content.body"
	SearchKeyName  = "content.name"
	SearchKeyTopic = "content.topic"
)

// SearchTextOf returns the key and text an event is indexed under, or ""
// when the event is not searchable.
func SearchTextOf(evType string, content []byte) (key, text string) {
	var c struct {
		Body   any `json:"body"`
		Name   any `json:"name"`
		Topic  any `json:"topic"`
		MTopic *struct {
			Text []struct {
				MimeType string `json:"mimetype"`
				Body     any    `json:"body"`
			} `json:"m.text"`
		} `json:"m.topic"`
	}
	if json.Unmarshal(content, &c) != nil {
		return "", ""
	}
	str := func(v any) string { s, _ := v.(string); return s }
	switch evType {
	case "m.room.message":
		key, text = SearchKeyBody, str(c.Body)
	case "m.room.name":
		key, text = SearchKeyName, str(c.Name)
	case "m.room.topic":
		key, text = SearchKeyTopic, str(c.Topic)
		// The text/plain representation of m.topic is searched too.
		if c.MTopic != nil {
			for _, t := range c.MTopic.Text {
				if b := str(t.Body); b != "" && b != text && (t.MimeType == "" || t.MimeType == "text/plain") {
					text = strings.TrimSpace(text + "\n" + b)
				}
			}
		}
	}
	if strings.TrimSpace(text) == "" || strings.ContainsRune(text, 0) {
		return "", ""
	}
	return key, text
}
