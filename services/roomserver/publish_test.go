package roomserver

import (
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/myelin-chat/myelin/pkg/bus"
)

func TestWaveEnd(t *testing.T) {
	msgs := func(rooms ...string) []outputMessage {
		var out []outputMessage
		for _, r := range rooms {
			out = append(out, outputMessage{roomID: r})
		}
		return out
	}
	for _, c := range []struct {
		rooms []string
		start int
		want  int
	}{
		{[]string{"a", "b", "c"}, 0, 3},
		{[]string{"a", "b", "a", "c"}, 0, 2},
		{[]string{"a", "b", "a", "c"}, 2, 4},
		{[]string{"a", "a"}, 0, 1},
		{[]string{"a", "a"}, 1, 2},
	} {
		if got := waveEnd(msgs(c.rooms...), c.start); got != c.want {
			t.Errorf("waveEnd(%v, %d) = %d, want %d", c.rooms, c.start, got, c.want)
		}
	}
}

// TestPublishKeepsRoomOrderAfterFailure: events of several rooms, committed
// interleaved while no publisher ran, are published in waves. JetStream
// refuses the events of one room after a few (a per-subject limit that
// discards new messages) and takes the other rooms' events after them; the
// round fails, the watermark stops before the first refused entry, and the
// next round publishes the rest (repeating some, which JetStream drops as
// duplicates): every room's events are on JetStream once each, in commit
// order.
func TestPublishKeepsRoomOrderAfterFailure(t *testing.T) {
	h := newHarness(t, nil)
	h.restart(false)
	var rooms []string
	want := map[string][]string{}
	for range 3 {
		created := h.createRoom("11", "public", map[string]int{alice: 100})
		rooms = append(rooms, created.GetRoomId())
		want[created.GetRoomId()] = slices.Clone(created.GetEventIds())
	}
	total := 0
	for range 4 {
		for j, roomID := range rooms {
			n := 1
			if j == 0 {
				n = 2 // two events of a room in a row split a wave
			}
			for range n {
				want[roomID] = append(want[roomID], h.mustSend(roomID, alice, message(t, "interleaved")))
			}
		}
	}
	for _, ids := range want {
		total += len(ids)
	}

	// Room 0 has the most events; the limit lets the others through and
	// refuses room 0's sixth message, the second of a pair, which starts a
	// wave with the other rooms' next events (acknowledged after it).
	stream, err := h.js.Stream(h.ctx, bus.RoomEventsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	limited := cfg
	limit := len(want[rooms[0]]) - 8 + 5
	limited.MaxMsgsPerSubject, limited.Discard, limited.DiscardNewPerSubject = int64(limit), jetstream.DiscardNew, true
	if _, err := h.js.UpdateStream(h.ctx, limited); err != nil {
		t.Fatal(err)
	}
	p := &publisher{s: h.svc}
	if err := p.publishPending(h.ctx); err == nil {
		t.Fatal("publishing into a full stream succeeded")
	}
	if p.mark == 0 {
		t.Fatal("the watermark did not move over the acknowledged entries")
	}
	// The first refused entry is room 0's event number limit+1.
	firstRefused := h.countRows(`SELECT o.stream_pos FROM outbox o JOIN events e USING (event_nid) WHERE e.event_id = $1`, want[rooms[0]][limit])
	if p.mark >= firstRefused {
		t.Fatalf("watermark %d passed the first refused entry %d", p.mark, firstRefused)
	}
	if n := h.countRows(`SELECT count(*) FROM outbox`); n != int64(total) {
		t.Fatalf("%d outbox entries, want %d", n, total)
	}

	if _, err := h.js.UpdateStream(h.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := p.publishPending(h.ctx); err != nil {
		t.Fatal(err)
	}
	for _, roomID := range rooms {
		msgs := h.waitPublished(roomID, len(want[roomID]))
		var got []string
		for _, m := range msgs {
			got = append(got, m.out.GetEventId())
		}
		if !slices.Equal(got, want[roomID]) {
			t.Fatalf("room %s: published %v\nwant %v", roomID, got, want[roomID])
		}
	}
}
