package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// FuzzReadObject drives the request body decoding every JSON-taking route
// goes through (ReadObject, then DecodeObject into the handler's type).
// Every refusal is a *matrixhttp.Error with a 4xx status and a Matrix
// errcode; what it accepts is one JSON object of valid UTF-8 without
// U+0000 that decodes into a map and into a typed request.
func FuzzReadObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` {"a":1} `, ``, `   `, `[]`, `null`, `"x"`, `{"a":"\u0000"}`, "{\"a\":\"\xff\"}", `{"a":"\ud800"}`,
		`{"user_id":5}`, `{"a":1}{}`, `{"a":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}`,
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, optional bool) {
		mode := BodyRequired
		if optional {
			mode = BodyOptional
		}
		req := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		obj, err := ReadObject(req, mode)
		if err != nil {
			checkRefusal(t, body, err)
			return
		}
		if !json.Valid(obj) || obj[0] != '{' || !utf8.Valid(obj) {
			t.Fatalf("accepted %q as %q", body, obj)
		}
		var m map[string]any
		if err := json.Unmarshal(obj, &m); err != nil || m == nil {
			t.Fatalf("accepted %q, which is no object: %v", body, err)
		}
		var typed struct {
			UserID  string         `json:"user_id"`
			Limit   *int           `json:"limit"`
			Content map[string]any `json:"content"`
			List    []string       `json:"list"`
		}
		if err := DecodeObject(obj, &typed); err != nil {
			checkRefusal(t, body, err)
		}
	})
}

func checkRefusal(t *testing.T, body []byte, err error) {
	t.Helper()
	var me *matrixhttp.Error
	if !errors.As(err, &me) {
		t.Fatalf("%q: refused with a non-Matrix error %v", body, err)
	}
	if me.Status < 400 || me.Status >= 500 || !strings.HasPrefix(me.ErrCode, "M_") {
		t.Fatalf("%q: refused with %d %s", body, me.Status, me.ErrCode)
	}
}
