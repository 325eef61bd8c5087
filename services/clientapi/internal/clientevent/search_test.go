package clientevent

import "testing"

func TestSearchTextOf(t *testing.T) {
	for _, c := range []struct{ typ, content, key, text string }{
		{"m.room.message", `{"msgtype":"m.text","body":"hello"}`, SearchKeyBody, "hello"},
		{"m.room.message", `{"body":42}`, "", ""},
		{"m.room.message", `{"body":"  "}`, "", ""},
		{"m.room.name", `{"name":"HQ"}`, SearchKeyName, "HQ"},
		{"m.room.topic", `{"topic":"plain","m.topic":{"m.text":[{"mimetype":"text/html","body":"<b>x</b>"},{"body":"rich"}]}}`, SearchKeyTopic, "plain\nrich"},
		{"m.room.encrypted", `{"ciphertext":"abc","body":"no"}`, "", ""},
		{"m.room.message", `not json`, "", ""},
	} {
		key, text := SearchTextOf(c.typ, []byte(c.content))
		if key != c.key || text != c.text {
			t.Errorf("SearchTextOf(%s, %s) = %q %q, want %q %q", c.typ, c.content, key, text, c.key, c.text)
		}
	}
}
