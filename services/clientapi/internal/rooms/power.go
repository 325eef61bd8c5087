package rooms

// Power-level questions the client-API must answer itself: the auth rules
// cover events, but some endpoints that write no event (deleting an alias,
// publishing a room in the directory) are allowed by "could this user send
// that state event".

import (
	"context"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// roomPower is a room's current power levels and creators.
type roomPower struct {
	pl       gomatrixserverlib.PowerLevelContent
	creators []string
	// privileged: room version 12+, where creators outrank everyone.
	privileged bool
}

// userLevel is the user's power; creators of 12+ rooms have infinite power.
func (p roomPower) userLevel(userID string) int64 {
	if p.privileged && slices.Contains(p.creators, userID) {
		return math.MaxInt64
	}
	return p.pl.UserLevel(spec.SenderID(userID))
}

// maySendState reports whether the user may send a state event of evType.
func (p roomPower) maySendState(userID, evType string) bool {
	return p.userLevel(userID) >= p.pl.EventLevel(evType, true)
}

// roomPowerOf reads a room's current power levels from the room-server.
// exists is false for an unknown room.
func (s *base) roomPowerOf(ctx context.Context, roomID string) (p roomPower, exists bool, err error) {
	resp, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{
		RoomId: roomID,
		Filter: []*roomserverv1.StateKeyTuple{{Type: spec.MRoomCreate}, {Type: spec.MRoomPowerLevels}},
	})
	if err != nil {
		return p, false, s.fromGRPC(ctx, "QueryState", err, nil)
	}
	if !resp.GetRoomExists() {
		return p, false, nil
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(resp.GetRoomVersion()))
	if err != nil {
		return p, false, err
	}
	p.privileged = verImpl.PrivilegedCreators()
	var plPDU gomatrixserverlib.PDU
	for _, ev := range resp.GetState() {
		pdu, err := clientevent.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return p, false, err
		}
		switch pdu.Type() {
		case spec.MRoomCreate:
			p.creators = gomatrixserverlib.CreatorsFromCreateEvent(pdu)
		case spec.MRoomPowerLevels:
			plPDU = pdu
		}
	}
	if plPDU != nil {
		if err := verImpl.ParsePowerLevels(plPDU.Content(), &p.pl); err != nil {
			return p, false, err
		}
	} else {
		// No power levels yet: the auth rules' defaults, creators at 100.
		p.pl.Defaults()
		p.pl.Users = map[string]int64{}
		for _, c := range p.creators {
			p.pl.Users[c] = 100
		}
	}
	return p, true, nil
}
