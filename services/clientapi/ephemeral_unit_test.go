package clientapi

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
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
			tok, err := parseStreamToken(c.in)
			if c.fail {
				if !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("parse %q: got %v, want ErrInvalidToken", c.in, err)
				}
				return
			}
			if err != nil || tok.pos != c.pos || tok.epos != c.epos || tok.apos != c.apos || tok.dpos != c.dpos {
				t.Fatalf("parse %q = %+v, %v; want pos %d epos %d apos %d dpos %d", c.in, tok, err, c.pos, c.epos, c.apos, c.dpos)
			}
			if back, err := parseStreamToken(tok.String()); err != nil || back != tok {
				t.Fatalf("round trip of %q: %+v %v", c.in, back, err)
			}
		})
	}
}

// TestNotifierEphemeralWakeups: typing in a room wakes its members only;
// a private receipt wakes its owner only; a presence change wakes everyone
// sharing a room; a change already past the waiter's position returns at
// once.
func TestNotifierEphemeralWakeups(t *testing.T) {
	const room = "!r:example.test"
	n := newNotifier(map[string][]string{room: {"@alice:x", "@bob:x"}})
	ctx := context.Background()
	start := func(u string, afterE int64) chan struct{} {
		ch := make(chan struct{})
		go func() { n.waitSync(ctx, u, syncCursor{epos: afterE}); close(ch) }()
		return ch
	}
	woken := func(ch chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	registered := func(users ...string) {
		testkit.Eventually(t, 10*time.Second, func() error {
			for _, u := range users {
				if !n.waiting(u) {
					return fmt.Errorf("%s not waiting yet", u)
				}
			}
			return nil
		})
	}

	alice, bob, carol := start("@alice:x", 0), start("@bob:x", 0), start("@carol:x", 0)
	registered("@alice:x", "@bob:x", "@carol:x")
	n.ephemeralRoom(room, 1)
	<-alice
	<-bob
	if woken(carol) || !n.waiting("@carol:x") {
		t.Fatal("carol, not in the room, was woken by its typing")
	}

	alice, bob = start("@alice:x", 1), start("@bob:x", 1)
	registered("@alice:x", "@bob:x")
	n.ephemeralUser("@bob:x", 2)
	<-bob
	if woken(alice) {
		t.Fatal("alice was woken by bob's private receipt")
	}
	n.ephemeralSharing("@bob:x", 3)
	<-alice
	if woken(carol) {
		t.Fatal("carol, sharing no room with bob, was woken by his presence")
	}
	n.ephemeralSharing("@carol:x", 4)
	<-carol

	// Already past: returns without waiting.
	done := make(chan struct{})
	go func() { n.waitSync(ctx, "@alice:x", syncCursor{epos: 2}); close(done) }()
	<-done
}
