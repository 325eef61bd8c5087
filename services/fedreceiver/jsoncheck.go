package fedreceiver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// errDuplicateKey is JSON with an object that names a key twice: the
// spec's canonical JSON has one value per key, and parsers disagree about
// which of two they keep, so such JSON is refused wherever it is signed
// or stored (events, request bodies).
var errDuplicateKey = errors.New("JSON object with a duplicate key")

// maxJSONDepth bounds nesting (a deeply nested body is a resource attack,
// not an event).
const maxJSONDepth = 200

// checkNoDuplicateKeys reports errDuplicateKey for valid JSON with a
// duplicate object key (keys compared after unescaping), an error for
// nesting deeper than maxJSONDepth and for JSON that is not valid.
//
// It walks the bytes once json.Valid has passed them, without decoding
// values: every PDU of a /send goes through it, and encoding/json's token
// decoder, used before, allocated per token (6% of the process's CPU in
// the federation ingest profile).
func checkNoDuplicateKeys(data []byte) error {
	if !json.Valid(data) {
		return errors.New("invalid JSON")
	}
	s := dupScanner{data: data}
	return s.value(0)
}

// dupScanner walks valid JSON.
type dupScanner struct {
	data []byte
	i    int
	// keys holds the keys of the objects being walked (up to smallObject
	// each), outermost first.
	keys [][]byte
}

func (s *dupScanner) space() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str skips a string (at its opening quote) and returns its raw contents
// and whether they hold an escape.
func (s *dupScanner) str() ([]byte, bool) {
	start := s.i + 1
	escaped := false
	for s.i = start; s.data[s.i] != '"'; s.i++ {
		if s.data[s.i] == '\\' {
			escaped = true
			s.i++ // the escaped byte (a \u's hex digits are plain bytes)
		}
	}
	s.i++
	return s.data[start : s.i-1], escaped
}

func (s *dupScanner) value(depth int) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	s.space()
	switch s.data[s.i] {
	case '{':
		return s.object(depth)
	case '[':
		s.i++
		s.space()
		if s.data[s.i] == ']' {
			s.i++
			return nil
		}
		for {
			if err := s.value(depth + 1); err != nil {
				return err
			}
			s.space()
			c := s.data[s.i]
			s.i++
			if c == ']' {
				return nil
			}
		}
	case '"':
		s.str()
		return nil
	}
	// A number, true, false or null.
	for ; s.i < len(s.data); s.i++ {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r', ',', ']', '}':
			return nil
		}
	}
	return nil
}

// smallObject is how many keys an object's check compares one by one;
// past it, a set (an object of many keys must not cost their square).
const smallObject = 16

func (s *dupScanner) object(depth int) error {
	s.i++ // '{'
	first := len(s.keys)
	defer func() { s.keys = s.keys[:first] }()
	var many map[string]struct{}
	s.space()
	if s.data[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.space()
		start := s.i
		key, escaped := s.str()
		if escaped || !utf8.Valid(key) {
			// Compared as decoded (escapes resolved, invalid UTF-8 as
			// U+FFFD).
			var k string
			if err := json.Unmarshal(s.data[start:s.i], &k); err != nil {
				return err
			}
			key = []byte(k)
		}
		own := s.keys[first:]
		switch {
		case many != nil:
			if _, dup := many[string(key)]; dup {
				return fmt.Errorf("%w: %q", errDuplicateKey, key)
			}
			many[string(key)] = struct{}{}
		case slices.ContainsFunc(own, func(k []byte) bool { return bytes.Equal(k, key) }):
			return fmt.Errorf("%w: %q", errDuplicateKey, key)
		case len(own) < smallObject:
			s.keys = append(s.keys, key)
		default:
			many = make(map[string]struct{}, 2*smallObject)
			for _, k := range own {
				many[string(k)] = struct{}{}
			}
			many[string(key)] = struct{}{}
		}
		s.space()
		s.i++ // ':'
		if err := s.value(depth + 1); err != nil {
			return err
		}
		s.space()
		c := s.data[s.i]
		s.i++
		if c == '}' {
			return nil
		}
	}
}
