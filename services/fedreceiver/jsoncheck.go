package fedreceiver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
// duplicate object key (and for nesting deeper than maxJSONDepth).
func checkNoDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := checkValue(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

func checkValue(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch delim {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := kt.(string)
			if seen[key] {
				return fmt.Errorf("%w: %q", errDuplicateKey, key)
			}
			seen[key] = true
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token() // '}'
		return err
	case '[':
		for dec.More() {
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	}
	return nil
}
