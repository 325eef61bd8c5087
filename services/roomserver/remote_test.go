package roomserver

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// newRemote is another homeserver in the tests (pkg/testkit/fedpeer): its
// events are built and signed with its own ed25519 key, and it publishes
// that key over HTTPS when given to newHarness as a peer.
func newRemote(t testing.TB, name string) *remotePeer {
	t.Helper()
	return &remotePeer{fedpeer.New(t, name)}
}

// remotePeer makes a fedpeer.Server a peer of the harness: its keys are
// served over HTTPS (federationTo) and fetched by the harness's
// key-server through the federation transport when the room-server first
// verifies one of its signatures.
type remotePeer struct{ *fedpeer.Server }

var _ peer = (*remotePeer)(nil)

func (r *remotePeer) serverName() string              { return string(r.Name) }
func (r *remotePeer) federationHandler() http.Handler { return r.Handler() }

// inputReq builds an InputEventsRequest.
func inputReq(kind roomserverv1.InputKind, evs ...gomatrixserverlib.PDU) *roomserverv1.InputEventsRequest {
	req := &roomserverv1.InputEventsRequest{}
	for _, ev := range evs {
		req.Events = append(req.Events, &roomserverv1.InputEvent{RoomVersion: string(ev.Version()), EventJson: ev.JSON(), Kind: kind})
	}
	return req
}

func (h *harness) inputReq(req *roomserverv1.InputEventsRequest) []*roomserverv1.InputEventResult {
	h.t.Helper()
	resp, err := h.rs.InputEvents(h.ctx, req)
	if err != nil {
		h.t.Fatalf("InputEvents: %v", err)
	}
	return resp.GetResults()
}

func wantStatuses(t testing.TB, res []*roomserverv1.InputEventResult, want roomserverv1.InputStatus) {
	t.Helper()
	for _, r := range res {
		if r.GetStatus() != want {
			t.Fatalf("%s: status %s (%s), want %s", r.GetEventId(), r.GetStatus(), r.GetReason(), want)
		}
	}
}

// localJoin builds alice's join to a remote room as the joining server
// does after make_join: on the remote's last event, signed by this
// server's key-server.
func (h *harness) localJoin(rr *fedpeer.Room, user string) gomatrixserverlib.PDU {
	h.t.Helper()
	pe := rr.Proto(user, spec.MRoomMember, &user, map[string]any{"membership": "join"})
	ev, err := h.svc.signer.Build(h.ctx, rr.Version, pe)
	if err != nil {
		h.t.Fatal(err)
	}
	return ev
}

// joinRemoteRoom joins user to rr the way send_join's answer is input: the
// state and auth chain as outliers (in reverse, to check the room-server
// orders them), then the join with the state before it.
func (h *harness) joinRemoteRoom(rr *fedpeer.Room, user string) gomatrixserverlib.PDU {
	h.t.Helper()
	join := h.localJoin(rr, user)
	stateIDs := rr.StateIDs()
	outliers := slices.Clone(rr.StateEvents())
	slices.SortFunc(outliers, func(a, b gomatrixserverlib.PDU) int { return int(b.Depth() - a.Depth()) })
	wantStatuses(h.t, h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUTLIER, outliers...)), accepted)
	req := inputReq(roomserverv1.InputKind_INPUT_KIND_NEW, join)
	req.Events[0].HasState, req.Events[0].StateEventIds = true, stateIDs
	wantStatuses(h.t, h.inputReq(req), accepted)
	rr.Apply(join)
	return join
}

func contentOf(t testing.TB, raw []byte) map[string]any {
	t.Helper()
	var ev struct {
		Content map[string]any `json:"content"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	return ev.Content
}
