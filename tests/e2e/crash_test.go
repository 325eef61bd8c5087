package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/testkit"
)

// crashVisibleWithin bounds how long committed events may stay out of
// /messages after a crashed client-API is back. It is no speed goal: before
// issue #19's fix, the events a dead process had fetched from the stream
// but not stored came back only after JetStream's one-minute ack wait (and
// were then numbered after newer ones); a reader that resumes from its own
// committed position has them at once.
const crashVisibleWithin = 30 * time.Second

// TestCrashUnderLoad kills the client-API (SIGKILL) of the split shape
// while 16 senders write into one room, starts it again, and checks that
// soon after every event the room-server published for the room (the
// stream's count for the room's subject) is in /messages, every message a
// sender got acknowledged among them, each sender's messages in the order
// they were sent, none twice; then that the server works on.
func TestCrashUnderLoad(t *testing.T) {
	s := split(t)
	s.start(t)
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	ctx := context.Background()

	alice := register(t, s.url, "crash-alice")
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	const senders = 16
	clients := make([]*mautrix.Client, senders)
	for i := range clients {
		u := register(t, s.url, fmt.Sprintf("crash-sender%d", i))
		if _, err := u.cli.JoinRoomByID(ctx, room); err != nil {
			t.Fatal(err)
		}
		u.cli.Client.Timeout = 5 * time.Second
		clients[i] = u.cli
	}

	// Each sender sends until its first failure (the crash); acked[i] is
	// how many of sender i's messages the server acknowledged.
	acked := make([]int, senders)
	var wg sync.WaitGroup
	for i, cli := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				if _, err := cli.SendText(ctx, room, fmt.Sprintf("s%d-%d", i, n)); err != nil {
					return
				}
				acked[i] = n + 1
			}
		}()
	}
	time.Sleep(3 * time.Second)
	var api *proc
	for _, p := range s.procs {
		if p.name == "client-api" {
			api = p
		}
	}
	if err := api.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-api.done
	api.cmd = nil
	wg.Wait()
	total := 0
	for _, n := range acked {
		total += n
	}
	if total < senders {
		t.Fatalf("only %d messages were acknowledged before the crash", total)
	}
	// What the room-server published for the room, by now all of it (the
	// room-server kept running; its outbox is published within moments).
	published := roomEventsPublished(t, s.natsURL, room)

	api.start(t)
	waitReady(t, s.url+"/_matrix/client/versions", s)
	back := time.Now()
	deadline := back.Add(crashVisibleWithin)
	for {
		events, bodies := roomHistory(t, alice.cli, room)
		missing, err := checkCrashHistory(bodies, acked)
		if err != nil {
			t.Fatal(err)
		}
		if now := roomEventsPublished(t, s.natsURL, room); now > published {
			published = now
		}
		if missing == 0 && events == published {
			t.Logf("%d events (%d acknowledged messages of %d senders) all in /messages %s after the restart",
				events, total, senders, time.Since(back).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after the restart: %d of the room's %d published events in /messages, %d of %d acknowledged messages missing",
				crashVisibleWithin, events, published, missing, total)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The server works after the crash: a new message lands after the rest.
	if _, err := alice.cli.SendText(ctx, room, "after the crash"); err != nil {
		t.Fatal(err)
	}
	_, bodies := roomHistory(t, alice.cli, room)
	if bodies[len(bodies)-1] != "after the crash" {
		t.Fatalf("the message sent after the crash is not last: %v", bodies[max(0, len(bodies)-5):])
	}
}

// roomEventsPublished counts the messages on the room's subject of the
// room events stream.
func roomEventsPublished(t *testing.T, natsURL string, room id.RoomID) int {
	t.Helper()
	js := testkit.JetStream(t, natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, bus.RoomEventsStream)
	if err != nil {
		t.Fatal(err)
	}
	subject := bus.RoomEventsSubject(string(room))
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Subjects[subject])
}

// roomHistory pages /messages backwards from the end: the number of
// events of every type, and the message bodies oldest first.
func roomHistory(t *testing.T, cli *mautrix.Client, room id.RoomID) (int, []string) {
	t.Helper()
	ctx := context.Background()
	var bodies []string
	events := 0
	from := ""
	for page := 0; page < 1000; page++ {
		resp, err := cli.Messages(ctx, room, from, "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatalf("messages: %v", err)
		}
		events += len(resp.Chunk)
		for _, ev := range resp.Chunk {
			if b := messageBody(ev); b != "" {
				bodies = append(bodies, b)
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	for i, j := 0, len(bodies)-1; i < j; i, j = i+1, j-1 {
		bodies[i], bodies[j] = bodies[j], bodies[i]
	}
	return events, bodies
}

// checkCrashHistory checks the room's message bodies (oldest first): each
// sender's messages in sending order without repeats, and returns how
// many acknowledged ones are missing.
func checkCrashHistory(bodies []string, acked []int) (missing int, err error) {
	next := make([]int, len(acked))
	for _, b := range bodies {
		sender, n, ok := parseCrashBody(b, len(acked))
		if !ok {
			continue
		}
		// A message may be stored without its acknowledgement reaching the
		// sender (the crash cut the answer), so n may reach acked[sender],
		// never beyond it, and never out of order.
		if n != next[sender] {
			return 0, fmt.Errorf("sender %d: message %d follows message %d (out of order or repeated)", sender, n, next[sender]-1)
		}
		if n > acked[sender] {
			return 0, fmt.Errorf("sender %d: message %d stored, but the sender stopped after %d", sender, n, acked[sender])
		}
		next[sender]++
	}
	for i, n := range acked {
		if next[i] < n {
			missing += n - next[i]
		}
	}
	return missing, nil
}

// parseCrashBody reads "s<sender>-<n>".
func parseCrashBody(b string, senders int) (sender, n int, ok bool) {
	rest, found := strings.CutPrefix(b, "s")
	if !found {
		return 0, 0, false
	}
	a, c, found := strings.Cut(rest, "-")
	if !found {
		return 0, 0, false
	}
	sender, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(c)
	return sender, n, err1 == nil && err2 == nil && sender < senders
}
