package fedreceiver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// referenceDupCheck is the token decoder check that checkNoDuplicateKeys
// replaced: the oracle its verdicts are compared with.
func referenceDupCheck(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := referenceValue(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

func referenceValue(dec *json.Decoder, depth int) error {
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
			if err := referenceValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	case '[':
		for dec.More() {
			if err := referenceValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	}
	return nil
}

// verdict is what a check says: ok, duplicate key, or another error.
func verdict(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errDuplicateKey):
		return "duplicate"
	}
	return "error"
}

// randomJSON writes a random value whose keys come from a small alphabet
// (so duplicates happen), sometimes escaped or invalid UTF-8, with random
// whitespace.
func randomJSON(r *rand.Rand, b *strings.Builder, depth int) {
	ws := func() {
		if r.IntN(4) == 0 {
			b.WriteString([]string{" ", "\n", "\t ", "\r\n"}[r.IntN(4)])
		}
	}
	key := func() string {
		return []string{`"a"`, `"b"`, `"\u0061"`, `"\"q"`, `"c\\"`, `"x` + "\xff" + `"`, `"x` + "\xfe" + `"`, `"ab"`, `""`, `"\/"`, `"/"`}[r.IntN(11)]
	}
	ws()
	switch k := r.IntN(10); {
	case k < 3 && depth < 6:
		b.WriteByte('{')
		n := r.IntN(5)
		if r.IntN(10) == 0 {
			n = 20 + r.IntN(20) // past smallObject
		}
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			ws()
			if n > 10 {
				fmt.Fprintf(b, `"k%d"`, r.IntN(3*n))
			} else {
				b.WriteString(key())
			}
			ws()
			b.WriteByte(':')
			randomJSON(r, b, depth+1)
		}
		ws()
		b.WriteByte('}')
	case k < 5 && depth < 6:
		b.WriteByte('[')
		for i := range r.IntN(4) {
			if i > 0 {
				b.WriteByte(',')
			}
			randomJSON(r, b, depth+1)
		}
		b.WriteByte(']')
	default:
		b.WriteString([]string{`1`, `-2.5e3`, `true`, `false`, `null`, `"s"`, `"\u00e9\n"`, `0`}[r.IntN(8)])
	}
	ws()
}

// TestDuplicateKeyCheckAgainstDecoder: the byte walk agrees with the
// token decoder on random JSON, on nesting at and past the bound, and on
// text that is not JSON.
func TestDuplicateKeyCheckAgainstDecoder(t *testing.T) {
	r := rand.New(rand.NewPCG(16, 20))
	counts := map[string]int{}
	for i := range 20000 {
		var b strings.Builder
		randomJSON(r, &b, 0)
		data := []byte(b.String())
		got, want := verdict(checkNoDuplicateKeys(data)), verdict(referenceDupCheck(data))
		if got != want {
			t.Fatalf("case %d %q: %s, the decoder says %s", i, data, got, want)
		}
		counts[got]++
	}
	if counts["ok"] < 1000 || counts["duplicate"] < 1000 {
		t.Fatalf("random cases too one-sided: %v", counts)
	}
	cases := []string{
		strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth),
		strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1),
		strings.Repeat(`{"a":`, maxJSONDepth) + "1" + strings.Repeat("}", maxJSONDepth),
		strings.Repeat(`{"a":`, maxJSONDepth+1) + "1" + strings.Repeat("}", maxJSONDepth+1),
		`{"a":1,"a":2}`, `{"a":{"b":1},"b":{"a":1,"a":1}}`, `{"a":{"a":1},"b":2}`, `[{"a":1},{"a":1}]`,
		`{"a":1} x`, `{"a":1}{"a":1}`, `{"a":}`, `{"a" 1}`, `[1,]`, ``, `  `, `"str"`, `12`, `{"\u0000":1,"\u0000":2}`,
	}
	for _, c := range cases {
		if got, want := verdict(checkNoDuplicateKeys([]byte(c))), verdict(referenceDupCheck([]byte(c))); got != want {
			t.Errorf("%.60q: %s, the decoder says %s", c, got, want)
		}
	}
}

// BenchmarkDuplicateKeyCheck: a message PDU's check, the byte walk
// against the token decoder it replaced.
func BenchmarkDuplicateKeyCheck(b *testing.B) {
	pdu := []byte(`{"auth_events":["$Xo1zdS2Kc1dkI1QJW5hDtoVYH-r0IfAcW1T2OGaL6wQ","$q3RYl1n4BrvN6mx2-0tC9C2f5f9SY9mx4XWwXDyi7jE","$mGr1z5c8hlu_Y8N3O-qbvHI8m0o8S6gXKsP3D8qb2ZE"],"content":{"body":"ingest 17 from peer0.test","msgtype":"m.text"},"depth":40,"hashes":{"sha256":"oB6Gk4C0Hn7XU5mYzQv5tpVhDUm0xR3aQ1lO3b1m0rA"},"origin":"peer0.test","origin_server_ts":1796690000000,"prev_events":["$9Ym3kC3pT1w5rX0a8H2mQeB8J3vDq0sE7u1cL4nZ6yA"],"room_id":"!abcdefghijklmnop:hs.test","sender":"@lg-sender:peer0.test","signatures":{"peer0.test":{"ed25519:1":"Zb3k2v8l0QwT9sX6uY1a5pE7rJ4nM0cG2hD8fK3iL6oB9qW1eR5tY7uI0pA3sD6fG9hJ2kL5zX8cV1bN4mQ7wE"}},"type":"m.room.message","unsigned":{"age_ts":1796690000000}}`)
	b.Run("walk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := checkNoDuplicateKeys(pdu); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decoder", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := referenceDupCheck(pdu); err != nil {
				b.Fatal(err)
			}
		}
	})
}
