package fedsender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Leaves, knocks and invites through other servers.

// buildMembership completes a make_leave or make_knock template into this
// user's signed membership event.
func (s *Service) buildMembership(id *fclient.SigningIdentity, version gomatrixserverlib.RoomVersion, pe gomatrixserverlib.ProtoEvent,
	roomID, userID, membership string, extra map[string]any) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, err
	}
	content := map[string]any{}
	_ = json.Unmarshal(pe.Content, &content)
	for k, v := range extra {
		content[k] = v
	}
	content["membership"] = membership
	pe.Type, pe.RoomID, pe.SenderID, pe.StateKey, pe.Redacts = spec.MRoomMember, roomID, userID, &userID, ""
	if err := pe.SetContent(content); err != nil {
		return nil, err
	}
	if err := pe.SetUnsigned(struct{}{}); err != nil {
		return nil, err
	}
	return verImpl.NewEventBuilderFromProtoEvent(&pe).Build(s.now(), id.ServerName, id.KeyID, id.PrivateKey)
}

// defaultVersion is the room version a make_* answer without one implies.
func defaultVersion(v gomatrixserverlib.RoomVersion) gomatrixserverlib.RoomVersion {
	if v == "" {
		return gomatrixserverlib.RoomVersionV1
	}
	return v
}

// inputMembership hands a membership made through another server to the
// room-server: NEW when this server is in the room (the event joins its
// graph), OUT_OF_ROOM when it is not (with the stripped state given).
func (s *Service) inputMembership(ctx context.Context, ev gomatrixserverlib.PDU, stripped [][]byte) (string, error) {
	info, err := s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: ev.RoomID().String()})
	if err != nil {
		return "", fmt.Errorf("QueryRoomInfo: %w", err)
	}
	in := &roomserverv1.InputEvent{RoomVersion: string(ev.Version()), EventJson: ev.JSON(), Kind: roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM,
		StrippedState: stripped}
	if info.GetRoomExists() && len(info.GetForwardExtremities()) > 0 {
		in = &roomserverv1.InputEvent{RoomVersion: string(ev.Version()), EventJson: ev.JSON(), Kind: roomserverv1.InputKind_INPUT_KIND_NEW}
	}
	resp, err := s.rooms.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{in}})
	if err != nil {
		return "", fmt.Errorf("InputEvents: %w", err)
	}
	r := resp.GetResults()
	if len(r) != 1 {
		return "", fmt.Errorf("%w: %s", ErrNotAccepted, describe(r))
	}
	if !stored(r[0].GetStatus()) {
		s.log.Warn("the room-server did not take a membership made through another server", logging.EventID(ev.EventID()),
			zap.String("status", r[0].GetStatus().String()), zap.String("reason", r[0].GetReason()))
	}
	return r[0].GetStatus().String(), nil
}

func (s *Service) performLeave(ctx context.Context, req *fedsenderv1.PerformLeaveRequest) (*fedsenderv1.PerformLeaveResponse, error) {
	user, err := s.localUser(req.GetUserId())
	if err != nil {
		return nil, err
	}
	roomID, err := spec.NewRoomID(req.GetRoomId())
	if err != nil {
		return nil, fmt.Errorf("%w: room ID %q", ErrBadRequest, req.GetRoomId())
	}
	extra, err := object(req.GetContent())
	if err != nil {
		return nil, err
	}
	servers := s.serverList(req.GetServerNames())
	if len(servers) == 0 {
		return nil, fmt.Errorf("%w: no server other than this one to leave through", ErrBadRequest)
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, server := range servers {
		ev, err := s.leaveThrough(ctx, fc, id, spec.ServerName(server), roomID.String(), user.String(), extra)
		if err != nil {
			errs = append(errs, remoteErr(ctx, server, err))
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		s.sender.answered(server)
		st, err := s.inputMembership(ctx, ev, nil)
		if err != nil {
			return nil, err
		}
		return &fedsenderv1.PerformLeaveResponse{EventId: ev.EventID(), ServerName: server, InputStatus: st}, nil
	}
	return nil, bestError(errs)
}

func (s *Service) leaveThrough(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName,
	roomID, userID string, extra map[string]any) (gomatrixserverlib.PDU, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	tmpl, err := fc.MakeLeave(rctx, s.serverName, server, roomID, userID)
	if err != nil {
		return nil, err
	}
	ev, err := s.buildMembership(id, defaultVersion(tmpl.RoomVersion), tmpl.LeaveEvent, roomID, userID, spec.Leave, extra)
	if err != nil {
		return nil, badResponse(string(server), "make_leave template: %v", err)
	}
	if err := fc.SendLeave(rctx, s.serverName, server, ev); err != nil {
		return nil, err
	}
	return ev, nil
}

func (s *Service) performKnock(ctx context.Context, req *fedsenderv1.PerformKnockRequest) (*fedsenderv1.PerformKnockResponse, error) {
	user, err := s.localUser(req.GetUserId())
	if err != nil {
		return nil, err
	}
	roomID, err := spec.NewRoomID(req.GetRoomId())
	if err != nil {
		return nil, fmt.Errorf("%w: room ID %q", ErrBadRequest, req.GetRoomId())
	}
	extra, err := object(req.GetContent())
	if err != nil {
		return nil, err
	}
	servers := s.serverList(req.GetServerNames())
	if len(servers) == 0 {
		return nil, fmt.Errorf("%w: no server other than this one to knock through", ErrBadRequest)
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, server := range servers {
		ev, stripped, err := s.knockThrough(ctx, fc, id, spec.ServerName(server), roomID.String(), user.String(), extra)
		if err != nil {
			errs = append(errs, remoteErr(ctx, server, err))
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		s.sender.answered(server)
		st, err := s.inputMembership(ctx, ev, stripped)
		if err != nil {
			return nil, err
		}
		return &fedsenderv1.PerformKnockResponse{EventId: ev.EventID(), ServerName: server, RoomVersion: string(ev.Version()),
			KnockRoomState: stripped, InputStatus: st}, nil
	}
	return nil, bestError(errs)
}

func (s *Service) knockThrough(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName,
	roomID, userID string, extra map[string]any) (gomatrixserverlib.PDU, [][]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	tmpl, err := fc.MakeKnock(rctx, s.serverName, server, roomID, userID, supportedVersions)
	if err != nil {
		return nil, nil, err
	}
	ev, err := s.buildMembership(id, defaultVersion(tmpl.RoomVersion), tmpl.KnockEvent, roomID, userID, spec.Knock, extra)
	if err != nil {
		return nil, nil, badResponse(string(server), "make_knock template: %v", err)
	}
	// The answer's knock_room_state is kept as sent (room version 12 sends
	// PDUs, which fclient's type would strip).
	var res struct {
		KnockRoomState []json.RawMessage `json:"knock_room_state"`
	}
	path := "/_matrix/federation/v1/send_knock/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID())
	if err := signedRequest(rctx, fc, id, http.MethodPut, server, path, ev, &res); err != nil {
		return nil, nil, err
	}
	stripped := make([][]byte, 0, len(res.KnockRoomState))
	for _, raw := range res.KnockRoomState {
		stripped = append(stripped, raw)
	}
	return ev, stripped, nil
}

func (s *Service) performInvite(ctx context.Context, req *fedsenderv1.PerformInviteRequest) (*fedsenderv1.PerformInviteResponse, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(req.GetRoomVersion()))
	if err != nil {
		return nil, fmt.Errorf("%w: room version %q", ErrBadRequest, req.GetRoomVersion())
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var ev gomatrixserverlib.PDU
	switch {
	case len(req.GetProtoEvent()) > 0 && len(req.GetEventJson()) == 0:
		var pe gomatrixserverlib.ProtoEvent
		if err := json.Unmarshal(req.GetProtoEvent(), &pe); err != nil {
			return nil, fmt.Errorf("%w: proto_event: %v", ErrBadRequest, err)
		}
		if ev, err = verImpl.NewEventBuilderFromProtoEvent(&pe).Build(s.now(), id.ServerName, id.KeyID, id.PrivateKey); err != nil {
			return nil, fmt.Errorf("%w: proto_event: %v", ErrBadRequest, err)
		}
	case len(req.GetEventJson()) > 0 && len(req.GetProtoEvent()) == 0:
		if ev, err = verImpl.NewEventFromUntrustedJSON(req.GetEventJson()); err != nil {
			return nil, fmt.Errorf("%w: event_json: %v", ErrBadRequest, err)
		}
	default:
		return nil, fmt.Errorf("%w: exactly one of proto_event and event_json", ErrBadRequest)
	}
	membership, _ := ev.Membership()
	if ev.Type() != spec.MRoomMember || membership != spec.Invite || ev.StateKey() == nil {
		return nil, fmt.Errorf("%w: not an invite", ErrBadRequest)
	}
	if !s.isLocal(string(ev.SenderID())) {
		return nil, fmt.Errorf("%w: the inviter is not a user of this server", ErrBadRequest)
	}
	invitee := *ev.StateKey()
	server := serverOf(invitee)
	if server == "" || server == string(s.serverName) {
		return nil, fmt.Errorf("%w: the invitee %q is not a user of another server", ErrBadRequest, invitee)
	}
	state := make([]json.RawMessage, 0, len(req.GetInviteRoomState()))
	for _, raw := range req.GetInviteRoomState() {
		if !json.Valid(raw) {
			return nil, fmt.Errorf("%w: invite_room_state holds something that is not JSON", ErrBadRequest)
		}
		state = append(state, raw)
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	signed, err := s.sendInvite(rctx, fc, id, spec.ServerName(server), ev, state)
	if err != nil {
		return nil, remoteErr(ctx, server, err)
	}
	s.sender.answered(server)
	out, err := verImpl.NewEventFromUntrustedJSON(signed)
	if err != nil {
		return nil, badResponse(server, "the invite it signed: %v", err)
	}
	if out.EventID() != ev.EventID() || !sameBesidesSignatures(out.JSON(), ev.JSON()) {
		return nil, badResponse(server, "it changed the invite (event %s, sent %s)", out.EventID(), ev.EventID())
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, out, s.keyRing, userIDForSender); err != nil {
		return nil, badResponse(server, "the invite's signatures: %v", err)
	}
	return &fedsenderv1.PerformInviteResponse{EventJson: out.JSON(), EventId: out.EventID()}, nil
}

// sendInvite sends /invite v2 (with invite_room_state as given: PDUs for
// room version 12), falling back to v1 when the server has no v2.
func (s *Service) sendInvite(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName,
	ev gomatrixserverlib.PDU, state []json.RawMessage) ([]byte, error) {
	body := map[string]any{"event": json.RawMessage(ev.JSON()), "room_version": ev.Version(), "invite_room_state": state}
	suffix := url.PathEscape(ev.RoomID().String()) + "/" + url.PathEscape(ev.EventID())
	var v2 fclient.RespInviteV2
	err := signedRequest(ctx, fc, id, http.MethodPut, server, "/_matrix/federation/v2/invite/"+suffix, body, &v2)
	var herr gomatrix.HTTPError
	if errors.As(err, &herr) && herr.Code == http.StatusNotFound {
		var v1 fclient.RespInvite
		if err := signedRequest(ctx, fc, id, http.MethodPut, server, "/_matrix/federation/v1/invite/"+suffix, json.RawMessage(ev.JSON()), &v1); err != nil {
			return nil, err
		}
		return v1.Event, nil
	}
	if err != nil {
		return nil, err
	}
	return v2.Event, nil
}

// clients returns a signing federation client and the signing identity.
func (s *Service) clients(ctx context.Context) (fclient.FederationClient, *fclient.SigningIdentity, error) {
	fc, err := s.fed.Federation(ctx)
	if err != nil {
		return nil, nil, err
	}
	id, err := s.fed.Identity(ctx)
	if err != nil {
		return nil, nil, err
	}
	return fc, id, nil
}

// sameBesidesSignatures reports whether two events are the same but for
// their signatures and unsigned data.
func sameBesidesSignatures(a, b []byte) bool {
	strip := func(raw []byte) []byte {
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			return nil
		}
		delete(m, "signatures")
		delete(m, "unsigned")
		out, err := json.Marshal(m)
		if err != nil {
			return nil
		}
		canonical, err := gomatrixserverlib.CanonicalJSON(out)
		if err != nil {
			return nil
		}
		return canonical
	}
	x, y := strip(a), strip(b)
	return x != nil && string(x) == string(y)
}
