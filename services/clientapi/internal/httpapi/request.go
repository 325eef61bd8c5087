package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// MaxBodyBytes caps request bodies. Events are at most 64 KiB; createRoom
// with initial_state may carry several.
const MaxBodyBytes = 1 << 20

// BodyMode says whether an endpoint accepts an empty body as {}.
type BodyMode int

const (
	BodyRequired BodyMode = iota
	BodyOptional
)

// ReadObject reads the request body and checks it is one JSON object:
// M_NOT_JSON when it is not JSON at all, M_BAD_JSON when it is JSON but
// not an object, M_TOO_LARGE when over the cap.
func ReadObject(r *http.Request, mode BodyMode) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, matrixhttp.NotJSON("Could not read request body")
	}
	if len(body) > MaxBodyBytes {
		return nil, TooLarge("Request body too large")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 && mode == BodyOptional {
		return []byte("{}"), nil
	}
	if !json.Valid(trimmed) {
		return nil, matrixhttp.NotJSON("Content not JSON.")
	}
	if err := CheckJSONText(trimmed); err != nil {
		return nil, err
	}
	if trimmed[0] != '{' {
		return nil, matrixhttp.BadJSON("Request body must be a JSON object")
	}
	return trimmed, nil
}

// CheckJSONText refuses JSON no store can hold (matrixhttp.CheckJSONText):
// invalid UTF-8 is not JSON at all (M_NOT_JSON); U+0000 and unpaired
// surrogate escapes are JSON the server cannot accept (M_BAD_JSON).
func CheckJSONText(b []byte) error {
	err := matrixhttp.CheckJSONText(b)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, matrixhttp.ErrInvalidUTF8):
		return matrixhttp.NotJSON("Content not JSON: " + err.Error())
	default:
		return matrixhttp.BadJSON("Unsupported JSON: " + err.Error())
	}
}

// DecodeBody reads a JSON object body into v. Wrong types are M_BAD_JSON.
func DecodeBody(r *http.Request, mode BodyMode, v any) error {
	body, err := ReadObject(r, mode)
	if err != nil {
		return err
	}
	return DecodeObject(body, v)
}

// DecodeObject unmarshals JSON that is known to be an object into v.
func DecodeObject(body []byte, v any) error {
	if err := CheckJSONText(body); err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return matrixhttp.BadJSON(fmt.Sprintf("Field %q has the wrong type", te.Field))
		}
		return matrixhttp.BadJSON("Malformed JSON: " + err.Error())
	}
	return nil
}

// PathParam returns a decoded path parameter. The router matches on the
// escaped path (see RegisterHTTP), so parameters can hold '/' and '%'.
func PathParam(r *http.Request, name string) (string, error) {
	raw := chi.URLParam(r, name)
	v, err := url.PathUnescape(raw)
	if err != nil {
		return "", matrixhttp.InvalidParam("Malformed path parameter " + name)
	}
	return v, nil
}

// ChiParam is an optional path parameter, unescaped ("" if absent).
func ChiParam(r *http.Request, name string) string {
	v, err := PathParam(r, name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(v)
}

// ClientIP is the rate-limiting key for unauthenticated endpoints.
func ClientIP(r *http.Request, trustForwarded bool) string {
	if trustForwarded {
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			first, _, _ := strings.Cut(xff, ",")
			if ip := strings.TrimSpace(first); ip != "" {
				return ip
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// RoomIDParam reads and validates the {roomId} path parameter.
func RoomIDParam(r *http.Request) (string, error) {
	roomID, err := PathParam(r, "roomId")
	if err != nil {
		return "", err
	}
	if _, err := spec.NewRoomID(roomID); err != nil {
		return "", matrixhttp.InvalidParam("Invalid room ID")
	}
	return roomID, nil
}
