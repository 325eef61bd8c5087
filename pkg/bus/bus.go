// Package bus connects to NATS JetStream and defines the streams and
// subjects that carry events between services. Every stream is declared
// here, once, so docs/architecture.md has one place to mirror.
package bus

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config locates the NATS server.
type Config struct {
	// URL of an external NATS server. Empty in the all-in-one shape means
	// "start the embedded server".
	URL string `yaml:"url"`
	// Replicas for each stream (1 for a single server, 3 for a cluster).
	Replicas int `yaml:"replicas"`
}

// Streams and subjects.
const (
	// RoomEventsStream holds every committed room event, published by the
	// room-server on RoomEventsSubject(roomID).
	RoomEventsStream = "MYELIN_ROOM_EVENTS"
	// roomEventsPrefix is the subject prefix of RoomEventsStream.
	roomEventsPrefix = "myelin.roomserver.events."
)

// RoomEventsSubject is the subject for one room's committed events. Room IDs
// contain '.' and other characters NATS tokens do not allow, so the room ID
// is base64url-encoded into a single token.
func RoomEventsSubject(roomID string) string {
	return roomEventsPrefix + base64.RawURLEncoding.EncodeToString([]byte(roomID))
}

// RoomEventsAllSubjects matches every room's subject.
const RoomEventsAllSubjects = roomEventsPrefix + ">"

// Ephemeral data (presence, typing, receipts), published by the presence
// service. Payloads are presence.v1 TypingUpdate, ReceiptUpdate and
// PresenceUpdate. The data itself lives in the presence service; these
// messages tell readers (the client-API's /sync) that something changed.
const (
	// EphemeralStream holds the presence service's change notifications.
	EphemeralStream = "MYELIN_EPHEMERAL"
	// ephemeralPrefix is the subject prefix of EphemeralStream.
	ephemeralPrefix = "myelin.presence."
	// EphemeralAllSubjects matches every subject of EphemeralStream.
	EphemeralAllSubjects = ephemeralPrefix + ">"
)

// TypingSubject carries a room's typing changes.
func TypingSubject(roomID string) string {
	return ephemeralPrefix + KindTyping + "." + token(roomID)
}

// ReceiptsSubject carries a room's receipt changes.
func ReceiptsSubject(roomID string) string {
	return ephemeralPrefix + KindReceipts + "." + token(roomID)
}

// ReceiptsAllSubjects matches every room's receipt changes.
const ReceiptsAllSubjects = ephemeralPrefix + KindReceipts + ".>"

// PresenceSubject carries a user's presence changes.
func PresenceSubject(userID string) string {
	return ephemeralPrefix + KindStatus + "." + token(userID)
}

// Kinds of ephemeral change, the subject token after "myelin.presence.".
const (
	KindTyping   = "typing"
	KindReceipts = "receipts"
	KindStatus   = "status"
)

// Key changes (device lists and cross-signing), published by the
// key-server after each change commits, in position order. Payload:
// keyserver.v1.KeyChange. The client-API wakes the /sync long polls of
// the users sharing a room with the changed user; the federation sender
// will turn them into m.device_list_update and m.signing_key_update EDUs.
const (
	// KeyChangesStream holds the key-server's key change log.
	KeyChangesStream = "MYELIN_KEY_CHANGES"
	// keyChangesPrefix is the subject prefix of KeyChangesStream.
	keyChangesPrefix = "myelin.keyserver.devicelists."
	// KeyChangesAllSubjects matches every user's key changes.
	KeyChangesAllSubjects = keyChangesPrefix + ">"
)

// KeyChangesSubject carries one user's key changes.
func KeyChangesSubject(userID string) string { return keyChangesPrefix + token(userID) }

// KeyChangeMsgID is the Nats-Msg-Id of the key change at a device list
// position: a change published again within the duplicate window is
// dropped.
func KeyChangeMsgID(position int64) string { return "keychange-" + strconv.FormatInt(position, 10) }

// Send-to-device messages for users of other servers, published by the
// client-API (one clientapi.v1.ToDeviceOut per request and destination
// server, Nats-Msg-Id = its message_id) and consumed by the federation
// sender, which sends them as m.direct_to_device EDUs.
const (
	// ToDeviceOutStream holds send-to-device messages for remote users.
	ToDeviceOutStream = "MYELIN_TO_DEVICE_OUT"
	// toDeviceOutPrefix is the subject prefix of ToDeviceOutStream.
	toDeviceOutPrefix = "myelin.clientapi.todevice."
	// ToDeviceOutAllSubjects matches every destination's messages.
	ToDeviceOutAllSubjects = toDeviceOutPrefix + ">"
)

// ToDeviceOutSubject carries the messages for one destination server.
func ToDeviceOutSubject(serverName string) string { return toDeviceOutPrefix + token(serverName) }

// To-device messages from other servers (m.direct_to_device EDUs), one
// message per local recipient, published by the federation-receiver.
// Payload: fedreceiver.v1.InboundToDevice. The client-API is to consume
// them into its to-device queue (not wired yet: the consumer is left to
// the client-API's owners).
const (
	// ToDeviceInStream holds inbound to-device messages.
	ToDeviceInStream = "MYELIN_TO_DEVICE_IN"
	// toDeviceInPrefix is the subject prefix of ToDeviceInStream.
	toDeviceInPrefix = "myelin.fedreceiver.todevice."
	// ToDeviceInAllSubjects matches every recipient's messages.
	ToDeviceInAllSubjects = toDeviceInPrefix + ">"
)

// ToDeviceInSubject carries one local user's inbound to-device messages.
func ToDeviceInSubject(userID string) string { return toDeviceInPrefix + token(userID) }

// ToDeviceMsgID is the Nats-Msg-Id of an EDU's messages for one
// recipient: the EDU's origin and message_id (unique per sender) and the
// recipient, hashed (message IDs are arbitrary strings), so the same EDU
// received again is dropped within the duplicate window.
func ToDeviceMsgID(origin, messageID, userID string) string {
	return hashedMsgID("todevice-", origin, messageID, userID)
}

// hashedMsgID is prefix and the first 16 bytes (hex) of the SHA-256 of
// parts joined by NUL: a Nats-Msg-Id of bounded length from arbitrary
// strings.
func hashedMsgID(prefix string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return prefix + hex.EncodeToString(h[:16])
}

// To-device messages for users an application service with
// receive_ephemeral is interested in (MSC2409), published by the
// client-API before it stores them for /sync: a local PUT /sendToDevice's
// and those from other servers (MYELIN_TO_DEVICE_IN) alike, one message
// per request (or EDU) and recipient. Payload:
// clientapi.v1.AppserviceToDevice. The appservice service consumes them
// into its queues.
const (
	// AppserviceToDeviceStream holds to-device messages for appservices.
	AppserviceToDeviceStream = "MYELIN_APPSERVICE_TO_DEVICE"
	// appserviceToDevicePrefix is the subject prefix of
	// AppserviceToDeviceStream.
	appserviceToDevicePrefix = "myelin.clientapi.astodevice."
	// AppserviceToDeviceAllSubjects matches every recipient's messages.
	AppserviceToDeviceAllSubjects = appserviceToDevicePrefix + ">"
)

// AppserviceToDeviceSubject carries one local user's messages for
// appservices.
func AppserviceToDeviceSubject(userID string) string { return appserviceToDevicePrefix + token(userID) }

// AppserviceToDeviceMsgID is the Nats-Msg-Id of one send's messages for
// one recipient: key names the send (the sender, its device and the
// client's transaction ID; or an EDU's origin and message_id), so a
// retried request or a redelivered EDU publishes the same ID and
// JetStream drops the repeat.
func AppserviceToDeviceMsgID(key, userID string) string {
	return hashedMsgID("astodevice-", key, userID)
}

// Room directory alias changes, published by the room-server after each
// SetRoomAlias and RemoveRoomAlias (payload roomserver.v1.AliasChange: the
// alias's state after the change) and consumed by the appservice service.
const (
	// RoomAliasesStream holds alias changes.
	RoomAliasesStream = "MYELIN_ROOM_ALIASES"
	// roomAliasesPrefix is the subject prefix of RoomAliasesStream.
	roomAliasesPrefix = "myelin.roomserver.aliases."
	// RoomAliasesAllSubjects matches every alias's changes.
	RoomAliasesAllSubjects = roomAliasesPrefix + ">"
)

// RoomAliasSubject carries one alias's changes.
func RoomAliasSubject(alias string) string { return roomAliasesPrefix + token(alias) }

// SyncWakeSubject is a core NATS subject, in no stream: client-API
// replicas announce on it what they stored (myelin.clientapi.v1.SyncWake),
// so each replica wakes the /sync long polls it holds. Delivery is at most
// once, which is enough for waking: a lost message delays a long poll to
// its timeout, it loses no data.
const SyncWakeSubject = "myelin.clientapi.wake"

// EphemeralKind returns the kind of an EphemeralStream subject, or "".
func EphemeralKind(subject string) string {
	rest, ok := strings.CutPrefix(subject, ephemeralPrefix)
	if !ok {
		return ""
	}
	kind, _, _ := strings.Cut(rest, ".")
	return kind
}

// token encodes a Matrix ID as one NATS subject token.
func token(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

// Streams lists every stream Myelin uses. EnsureStreams creates them.
func Streams(replicas int) []jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return []jetstream.StreamConfig{{
		Name:        RoomEventsStream,
		Description: "Committed room events (roomserver.v1.OutputRoomEvent)",
		Subjects:    []string{RoomEventsAllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		// Publishers set Nats-Msg-Id to the event ID; republishing an event
		// within this window is dropped by the server.
		Duplicates: 10 * time.Minute,
		MaxAge:     7 * 24 * time.Hour,
	}, {
		Name:        EphemeralStream,
		Description: "Presence, typing and receipt changes (presence.v1 updates)",
		Subjects:    []string{EphemeralAllSubjects},
		// Change notifications are only useful while fresh: memory storage
		// and a short age. The data itself is in the presence service.
		Storage:   jetstream.MemoryStorage,
		Retention: jetstream.LimitsPolicy,
		Replicas:  replicas,
		MaxAge:    time.Hour,
	}, {
		Name:        KeyChangesStream,
		Description: "Device list and cross-signing key changes (keyserver.v1.KeyChange)",
		Subjects:    []string{KeyChangesAllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		// The key-server sets Nats-Msg-Id (KeyChangeMsgID); a change
		// published again after a crash is dropped within this window.
		Duplicates: 10 * time.Minute,
		MaxAge:     7 * 24 * time.Hour,
	}, {
		Name:        ToDeviceOutStream,
		Description: "Send-to-device messages for remote users (clientapi.v1.ToDeviceOut)",
		Subjects:    []string{ToDeviceOutAllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		// The client-API sets Nats-Msg-Id to the message_id: a client's
		// retried request is dropped within this window.
		Duplicates: 10 * time.Minute,
		MaxAge:     7 * 24 * time.Hour,
	}, {
		Name:        ToDeviceInStream,
		Description: "To-device messages from other servers (fedreceiver.v1.InboundToDevice)",
		Subjects:    []string{ToDeviceInAllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		// The receiver sets Nats-Msg-Id (ToDeviceMsgID): a transaction
		// retried within a day delivers its to-device messages once.
		Duplicates: 24 * time.Hour,
		MaxAge:     7 * 24 * time.Hour,
	}, {
		Name:        AppserviceToDeviceStream,
		Description: "To-device messages for application services' users (clientapi.v1.AppserviceToDevice)",
		Subjects:    []string{AppserviceToDeviceAllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		// The client-API sets Nats-Msg-Id (AppserviceToDeviceMsgID): a
		// retried request, or an inbound EDU redelivered, within a day is
		// queued for the appservices once.
		Duplicates: 24 * time.Hour,
		MaxAge:     7 * 24 * time.Hour,
	}, {
		Name:        RoomAliasesStream,
		Description: "Room directory alias changes (roomserver.v1.AliasChange)",
		Subjects:    []string{RoomAliasesAllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		// Each message is an alias's whole state: a repeat is harmless.
		MaxAge: 7 * 24 * time.Hour,
	}}
}

// Connect dials NATS and returns the connection and a JetStream handle.
// It retries the first connection so services can start before NATS.
func Connect(ctx context.Context, url, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// EnsureStreams creates or updates every stream. Both publishers and
// consumers call it, so start-up order does not matter.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, sc := range Streams(replicas) {
		var err error
		for attempt := 0; attempt < 50; attempt++ {
			if _, err = js.CreateOrUpdateStream(ctx, sc); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// ErrDisconnected is the cause of a WhileConnected context that ended
// because the NATS connection was lost.
var ErrDisconnected = errors.New("NATS connection lost")

// WhileConnected returns a context that ends with ctx, or as soon as nc is
// not connected (at once if it is not connected now), with cause
// ErrDisconnected (context.Cause). Call stop when done with it.
func WhileConnected(ctx context.Context, nc *nats.Conn) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	// Registered before the status is read, so a loss in between is seen.
	lost := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	if nc.Status() != nats.CONNECTED {
		cancel(ErrDisconnected)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-lost:
			cancel(ErrDisconnected)
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		cancel(context.Canceled)
		<-done
		nc.RemoveStatusListener(lost)
	}
}
