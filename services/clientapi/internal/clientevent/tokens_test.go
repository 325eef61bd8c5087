package clientevent

import (
	"errors"
	"testing"
)

func TestSyncTokenComponents(t *testing.T) {
	cases := []struct {
		in                    string
		pos, epos, apos, dpos int64
		fail                  bool
	}{
		{in: "s42", pos: 42},                // older tokens: no ephemeral position
		{in: "s42_e7", pos: 42, epos: 7},    // current format
		{in: "s42_x1_e7", pos: 42, epos: 7}, // unknown components are ignored
		{in: "s0_e9223372036854775807", epos: 9223372036854775807},
		{in: "s42_e7_a3", pos: 42, epos: 7, apos: 3},
		{in: "s42_a3", pos: 42, apos: 3},
		{in: "s42_e7_a3_d9", pos: 42, epos: 7, apos: 3, dpos: 9},
		{in: "s42_d9", pos: 42, dpos: 9},
		{in: "s42_d", fail: true},
		{in: "s42_d-2", fail: true},
		{in: "s42_a", fail: true},
		{in: "s42_e", fail: true},
		{in: "s42_e-1", fail: true},
		{in: "s42_eabc", fail: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			tok, err := ParseStreamToken(c.in)
			if c.fail {
				if !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("parse %q: got %v, want ErrInvalidToken", c.in, err)
				}
				return
			}
			if err != nil || tok.Pos != c.pos || tok.EPos != c.epos || tok.APos != c.apos || tok.DPos != c.dpos {
				t.Fatalf("parse %q = %+v, %v; want pos %d epos %d apos %d dpos %d", c.in, tok, err, c.pos, c.epos, c.apos, c.dpos)
			}
			if back, err := ParseStreamToken(tok.String()); err != nil || back != tok {
				t.Fatalf("round trip of %q: %+v %v", c.in, back, err)
			}
		})
	}
}

func TestStreamToken(t *testing.T) {
	cases := []struct {
		in   string
		pos  int64
		fail bool
	}{
		{in: "s0", pos: 0},
		{in: "s42", pos: 42},
		{in: "s42_7_9", pos: 42},
		{in: "s9223372036854775807", pos: 9223372036854775807},
		{in: "", fail: true},
		{in: "42", fail: true},
		{in: "s", fail: true},
		// Negative event positions are backfilled history (store/outofroom.go).
		{in: "s-1", pos: -1},
		{in: "s--1", fail: true},
		{in: "s-+1", fail: true},
		{in: "s1_e-1", fail: true},
		{in: "s+1", fail: true},
		{in: "sabc", fail: true},
		{in: "t12", fail: true},
		{in: "s99999999999999999999", fail: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			tok, err := ParseStreamToken(c.in)
			if c.fail {
				if !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("parse %q: got %v, want ErrInvalidToken", c.in, err)
				}
				return
			}
			if err != nil || tok.Pos != c.pos {
				t.Fatalf("parse %q = %d, %v; want %d", c.in, tok.Pos, err, c.pos)
			}
			back, err := ParseStreamToken(tok.String())
			if err != nil || back != tok {
				t.Fatalf("round trip of %q: %v %v", c.in, back, err)
			}
		})
	}
}
