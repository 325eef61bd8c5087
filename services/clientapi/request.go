package clientapi

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

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// maxBodyBytes caps request bodies. Events are at most 64 KiB; createRoom
// with initial_state may carry several.
const maxBodyBytes = 1 << 20

// bodyMode says whether an endpoint accepts an empty body as {}.
type bodyMode int

const (
	bodyRequired bodyMode = iota
	bodyOptional
)

// readObject reads the request body and checks it is one JSON object:
// M_NOT_JSON when it is not JSON at all, M_BAD_JSON when it is JSON but
// not an object, M_TOO_LARGE when over the cap.
func readObject(r *http.Request, mode bodyMode) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		return nil, matrixhttp.NotJSON("Could not read request body")
	}
	if len(body) > maxBodyBytes {
		return nil, tooLarge("Request body too large")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 && mode == bodyOptional {
		return []byte("{}"), nil
	}
	if !json.Valid(trimmed) {
		return nil, matrixhttp.NotJSON("Content not JSON.")
	}
	if err := checkJSONText(trimmed); err != nil {
		return nil, err
	}
	if trimmed[0] != '{' {
		return nil, matrixhttp.BadJSON("Request body must be a JSON object")
	}
	return trimmed, nil
}

// checkJSONText refuses JSON no store can hold (matrixhttp.CheckJSONText):
// invalid UTF-8 is not JSON at all (M_NOT_JSON); U+0000 and unpaired
// surrogate escapes are JSON the server cannot accept (M_BAD_JSON).
func checkJSONText(b []byte) error {
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

// decodeBody reads a JSON object body into v. Wrong types are M_BAD_JSON.
func decodeBody(r *http.Request, mode bodyMode, v any) error {
	body, err := readObject(r, mode)
	if err != nil {
		return err
	}
	return decodeObject(body, v)
}

// decodeObject unmarshals JSON that is known to be an object into v.
func decodeObject(body []byte, v any) error {
	if err := checkJSONText(body); err != nil {
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

// pathParam returns a decoded path parameter. The router matches on the
// escaped path (see RegisterHTTP), so parameters can hold '/' and '%'.
func pathParam(r *http.Request, name string) (string, error) {
	raw := chi.URLParam(r, name)
	v, err := url.PathUnescape(raw)
	if err != nil {
		return "", matrixhttp.InvalidParam("Malformed path parameter " + name)
	}
	return v, nil
}

// chiParam is an optional path parameter, unescaped ("" if absent).
func chiParam(r *http.Request, name string) string {
	v, err := pathParam(r, name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(v)
}

// clientIP is the rate-limiting key for unauthenticated endpoints.
func clientIP(r *http.Request, trustForwarded bool) string {
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
