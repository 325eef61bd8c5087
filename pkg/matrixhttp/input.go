package matrixhttp

import (
	"errors"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Input that is well-formed for Go but that no Matrix server can store:
// PostgreSQL's text and jsonb types hold neither U+0000 nor invalid UTF-8,
// and jsonb refuses unpaired UTF-16 surrogate escapes. Every HTTP edge
// checks request bodies and parameters with these before anything reaches
// a store, so such input is a 400, never a 500 from the database.
var (
	// ErrInvalidUTF8 is text that is not valid UTF-8.
	ErrInvalidUTF8 = errors.New("text is not valid UTF-8")
	// ErrNULCharacter is text holding U+0000.
	ErrNULCharacter = errors.New("text holds the character U+0000")
	// ErrLoneSurrogate is a JSON \u escape of half a UTF-16 surrogate pair.
	ErrLoneSurrogate = errors.New("JSON text holds an unpaired UTF-16 surrogate escape")
)

// CheckText reports whether s is valid UTF-8 without U+0000.
func CheckText(s string) error {
	if !utf8.ValidString(s) {
		return ErrInvalidUTF8
	}
	if strings.IndexByte(s, 0) >= 0 {
		return ErrNULCharacter
	}
	return nil
}

// CheckJSONText checks syntactically valid JSON text for what a store
// cannot hold: invalid UTF-8 (ErrInvalidUTF8), a raw or escaped U+0000
// (ErrNULCharacter) and unpaired surrogate escapes (ErrLoneSurrogate). It
// does not check the JSON syntax itself (json.Valid does).
func CheckJSONText(b []byte) error {
	if !utf8.Valid(b) {
		return ErrInvalidUTF8
	}
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case 0:
			return ErrNULCharacter
		case '\\':
			if i+1 >= len(b) {
				return nil
			}
			i++
			if b[i] != 'u' {
				continue // a one-character escape such as \" or \\
			}
			r, ok := hex4(b, i+1)
			if !ok {
				continue // not valid JSON; json.Valid reports it
			}
			i += 4
			switch {
			case r == 0:
				return ErrNULCharacter
			case r >= 0xDC00 && r <= 0xDFFF:
				return ErrLoneSurrogate
			case r >= 0xD800 && r <= 0xDBFF:
				// A high surrogate must be followed by \u and a low one.
				if i+2 >= len(b) || b[i+1] != '\\' || b[i+2] != 'u' {
					return ErrLoneSurrogate
				}
				low, ok := hex4(b, i+3)
				if !ok || low < 0xDC00 || low > 0xDFFF {
					return ErrLoneSurrogate
				}
				i += 6
			}
		}
	}
	return nil
}

// hex4 parses the four hex digits at b[i:i+4].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		default:
			return 0, false
		}
	}
	return r, true
}

// CheckRequestText checks a request's decoded path and query parameters
// with CheckText, returning the M_INVALID_PARAM error to answer, or nil.
// rawPath is the escaped path (a router that matches on it decodes each
// parameter itself, so %2F and %00 only appear after decoding).
func CheckRequestText(rawPath string, query url.Values) *Error {
	path, err := url.PathUnescape(rawPath)
	if err != nil {
		return InvalidParam("Malformed percent-encoding in the request path")
	}
	if err := CheckText(path); err != nil {
		return InvalidParam("Request path: " + err.Error())
	}
	for name, values := range query {
		if err := CheckText(name); err != nil {
			return InvalidParam("Query parameter name: " + err.Error())
		}
		for _, v := range values {
			if err := CheckText(v); err != nil {
				return InvalidParam("Query parameter " + name + ": " + err.Error())
			}
		}
	}
	return nil
}
