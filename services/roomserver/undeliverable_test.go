package roomserver

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/codes"

	"github.com/myelin-chat/myelin/pkg/devinfra"
	"github.com/myelin-chat/myelin/pkg/testkit"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// stoppableNATS is a JetStream server the test can stop and start again
// on the same port and store.
type stoppableNATS struct {
	t    *testing.T
	dir  string
	port int
	srv  *devinfra.NATS
}

func startStoppableNATS(t *testing.T) *stoppableNATS {
	t.Helper()
	n := &stoppableNATS{t: t, dir: t.TempDir()}
	n.start(-1)
	_, port, _ := net.SplitHostPort(n.srv.URL()[len("nats://"):])
	n.port, _ = strconv.Atoi(port)
	t.Cleanup(func() {
		if n.srv != nil {
			n.srv.Shutdown()
		}
	})
	return n
}

func (n *stoppableNATS) start(port int) {
	n.t.Helper()
	srv, err := devinfra.StartNATS(n.dir, "127.0.0.1", port)
	if err != nil {
		n.t.Fatalf("start NATS: %v", err)
	}
	n.srv = srv
}

func (n *stoppableNATS) stop()    { n.srv.Shutdown(); n.srv = nil }
func (n *stoppableNATS) restart() { n.start(n.port) }
func (n *stoppableNATS) url() string {
	return fmt.Sprintf("nats://127.0.0.1:%d", n.port)
}

// waitNATS waits until the harness's NATS connection is (or is not) up.
func (h *harness) waitNATS(up bool) {
	h.t.Helper()
	testkit.Eventually(h.t, 30*time.Second, func() error {
		if st := h.js.Conn().Status(); (st == nats.CONNECTED) != up {
			return fmt.Errorf("NATS connection %s", st)
		}
		if st := h.svc.js.Conn().Status(); (st == nats.CONNECTED) != up {
			return fmt.Errorf("room-server's NATS connection %s", st)
		}
		return nil
	})
}

// While NATS is down, local writes fail fast with UNAVAILABLE and store
// nothing (a client retries them); once it is back, the same transaction
// is accepted as new and published.
func TestWritesRefusedWhileNATSIsDown(t *testing.T) {
	n := startStoppableNATS(t)
	h := newHarnessOn(t, nil, n.url())
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	before := h.countRows(`SELECT count(*) FROM events`)

	n.stop()
	h.waitNATS(false)
	txn := &roomserverv1.TransactionID{DeviceId: "DEV", TxnId: "t1"}
	_, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: message(t, "while NATS is down"), TransactionId: txn})
	wantCode(t, err, codes.Unavailable)
	_, err = h.rs.CreateRoom(h.ctx, &roomserverv1.CreateRoomRequest{Creator: alice, RoomVersion: "11", InitialEvents: roomTemplates(t, "11", "public", map[string]int{alice: 100})})
	wantCode(t, err, codes.Unavailable)
	if after := h.countRows(`SELECT count(*) FROM events`); after != before {
		t.Fatalf("refused writes stored %d events", after-before)
	}

	n.restart()
	h.waitNATS(true)
	resp, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: message(t, "while NATS is down"), TransactionId: txn})
	if err != nil {
		t.Fatalf("send after NATS came back: %v", err)
	}
	if resp.GetDeduplicated() {
		t.Fatal("the refused send had been stored: its transaction came back deduplicated")
	}
	// The room's five initial events, then the message.
	got := h.waitPublished(roomID, 6)
	if id := got[5].out.GetEventId(); id != resp.GetEventId() {
		t.Fatalf("last published event %s, want %s", id, resp.GetEventId())
	}
}

// An event committed while NATS was up but not yet published when NATS
// went down is kept in the outbox and published once NATS is back.
func TestCommittedEventPublishedAfterNATSOutage(t *testing.T) {
	n := startStoppableNATS(t)
	h := newHarnessOn(t, nil, n.url())
	h.restart(false) // no publisher: the events stay in the outbox
	created := h.createRoom("11", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	id := h.mustSend(roomID, alice, message(t, "committed before the outage"))

	n.stop()
	h.waitNATS(false)
	// The publisher starts, and fails, while NATS is down.
	runCtx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- h.svc.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	n.restart()
	h.waitNATS(true)
	got := h.waitPublished(roomID, len(created.GetEventIds())+1)
	if last := got[len(got)-1].out.GetEventId(); last != id {
		t.Fatalf("last published event %s, want %s", last, id)
	}
}
