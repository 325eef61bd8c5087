package fedsender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// supportedVersions are the room versions the room-server runs: what
// make_join and make_knock offer (fclient's own MakeJoin would offer every
// version gomatrixserverlib knows, experimental ones included).
var supportedVersions = []gomatrixserverlib.RoomVersion{
	gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
	gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
	gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
	gomatrixserverlib.RoomVersionV10, gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12,
}

func versionQuery() string {
	q := url.Values{}
	for _, v := range supportedVersions {
		q.Add("ver", string(v))
	}
	return q.Encode()
}

// userIDForSender maps a sender to a user ID: every supported room
// version uses user IDs as senders.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// joinClient is gomatrixserverlib's FederatedJoinClient over fclient:
// make_join with the supported versions, send_join v2 falling back to v1
// (fclient's SendJoin does).
type joinClient struct {
	fc       fclient.FederationClient
	identity *fclient.SigningIdentity
}

func (c joinClient) MakeJoin(ctx context.Context, origin, s spec.ServerName, roomID, userID string) (gomatrixserverlib.MakeJoinResponse, error) {
	var res fclient.RespMakeJoin
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + "?" + versionQuery()
	if err := signedRequest(ctx, c.fc, c.identity, "GET", s, path, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

func (c joinClient) SendJoin(ctx context.Context, origin, s spec.ServerName, event gomatrixserverlib.PDU) (gomatrixserverlib.SendJoinResponse, error) {
	res, err := c.fc.SendJoin(ctx, origin, s, event)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// signedRequest makes a request fclient has no method for (or not the
// one needed), signed with X-Matrix.
func signedRequest(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, method string, dest spec.ServerName, path string, body, out any) error {
	req := fclient.NewFederationRequest(method, id.ServerName, dest, path)
	if body != nil {
		if err := req.SetContent(body); err != nil {
			return err
		}
	}
	if err := req.Sign(id.ServerName, id.KeyID, id.PrivateKey); err != nil {
		return err
	}
	httpReq, err := req.HTTPRequest()
	if err != nil {
		return err
	}
	return fc.DoRequestAndParseResponse(ctx, httpReq, out)
}

// serverList drops this server, empty names and repeats.
func (s *Service) serverList(names []string) []string {
	var out []string
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" || n == string(s.serverName) || slices.Contains(out, n) {
			continue
		}
		if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(n)); !ok {
			continue
		}
		out = append(out, n)
	}
	return out
}

// localUser parses a user ID that must be of this server.
func (s *Service) localUser(userID string) (*spec.UserID, error) {
	u, err := spec.NewUserID(userID, true)
	if err != nil || u.Domain() != s.serverName {
		return nil, fmt.Errorf("%w: %q is not a user of this server", ErrBadRequest, userID)
	}
	return u, nil
}

// object parses optional JSON object content.
func object(raw []byte) (map[string]any, error) {
	out := map[string]any{}
	if len(raw) == 0 {
		return out, nil
	}
	if err := json.Unmarshal(raw, &out); err != nil || out == nil {
		return nil, fmt.Errorf("%w: content is not a JSON object", ErrBadRequest)
	}
	return out, nil
}

// fedErr unwraps gomatrixserverlib's FederationError.
func fedErr(err *gomatrixserverlib.FederationError) error {
	if err == nil {
		return nil
	}
	if err.Reachable && err.Err != nil && !isHTTPError(err.Err) {
		// It answered, and what it answered did not pass the checks.
		return badResponse(string(err.ServerName), "%v", err.Err)
	}
	return err.Err
}

func (s *Service) performJoin(ctx context.Context, req *fedsenderv1.PerformJoinRequest) (*fedsenderv1.PerformJoinResponse, error) {
	user, err := s.localUser(req.GetUserId())
	if err != nil {
		return nil, err
	}
	roomID, err := spec.NewRoomID(req.GetRoomId())
	if err != nil {
		return nil, fmt.Errorf("%w: room ID %q", ErrBadRequest, req.GetRoomId())
	}
	if _, err := object(req.GetContent()); err != nil {
		return nil, err
	}
	servers := s.serverList(req.GetServerNames())
	if len(servers) == 0 {
		return nil, fmt.Errorf("%w: no server other than this one to join through", ErrBadRequest)
	}
	fc, err := s.fed.Federation(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.fed.Identity(ctx)
	if err != nil {
		return nil, err
	}
	log := s.log.With(logging.RoomID(req.GetRoomId()), logging.UserID(req.GetUserId()))
	var errs []error
	for _, server := range servers {
		content, _ := object(req.GetContent())
		actx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		started := time.Now()
		res, ferr := gomatrixserverlib.PerformJoin(actx, joinClient{fc: fc, identity: id}, gomatrixserverlib.PerformJoinInput{
			UserID: user, RoomID: roomID, ServerName: spec.ServerName(server), Content: content,
			PrivateKey: id.PrivateKey, KeyID: id.KeyID, KeyRing: s.keyRing,
			EventProvider: s.eventProvider(actx, fc, spec.ServerName(server)), UserIDQuerier: userIDForSender,
		})
		cancel()
		if ferr != nil {
			err := remoteErr(ctx, server, fedErr(ferr))
			log.Info("join through a server failed", zap.String("server", server), zap.Error(err))
			errs = append(errs, err)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		s.sender.answered(server)
		version := res.JoinEvent.Version()
		performed := time.Now()
		if err := s.inputJoin(ctx, res); err != nil {
			log.Warn("the room-server did not take the joined room", zap.String("server", server), zap.Error(err))
			return nil, err
		}
		// The two durations: make_join, send_join and the checks of its
		// answer; then the room-server's input of the state and the join.
		log.Info("joined a room through another server", zap.String("server", server), logging.EventID(res.JoinEvent.EventID()),
			zap.Int("state_events", len(res.StateSnapshot.GetStateEvents())), zap.Int("auth_events", len(res.StateSnapshot.GetAuthEvents())),
			zap.Duration("remote", performed.Sub(started)), zap.Duration("input", time.Since(performed)))
		return &fedsenderv1.PerformJoinResponse{EventId: res.JoinEvent.EventID(), RoomVersion: string(version), ServerName: server}, nil
	}
	return nil, bestError(errs)
}

// inputJoin hands the room's state and auth chain to the room-server as
// outliers, then the join as NEW with that state.
func (s *Service) inputJoin(ctx context.Context, res *gomatrixserverlib.PerformJoinResponse) error {
	version := res.JoinEvent.Version()
	state := res.StateSnapshot.GetStateEvents().TrustedEvents(version, false)
	auth := res.StateSnapshot.GetAuthEvents().TrustedEvents(version, false)
	var outliers []*roomserverv1.InputEvent
	seen := map[string]bool{}
	var stateIDs []string
	for _, ev := range slices.Concat(auth, state) {
		if seen[ev.EventID()] {
			continue
		}
		seen[ev.EventID()] = true
		// PerformJoin (CheckSendJoinResponse) checked their signatures
		// and dropped those that failed: the room-server does not check
		// them again.
		outliers = append(outliers, &roomserverv1.InputEvent{RoomVersion: string(version), EventJson: ev.JSON(),
			Kind: roomserverv1.InputKind_INPUT_KIND_OUTLIER, SignaturesChecked: true})
	}
	for _, ev := range state {
		stateIDs = append(stateIDs, ev.EventID())
	}
	started := time.Now()
	resp, err := s.rooms.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: outliers})
	if err != nil {
		return fmt.Errorf("input the room's state: %w", err)
	}
	for _, r := range resp.GetResults() {
		if !stored(r.GetStatus()) {
			s.log.Warn("the room-server did not take a state or auth event of a joined room", logging.EventID(r.GetEventId()),
				zap.String("status", r.GetStatus().String()), zap.String("reason", r.GetReason()))
		}
	}
	join := &roomserverv1.InputEvent{RoomVersion: string(version), EventJson: res.JoinEvent.JSON(), Kind: roomserverv1.InputKind_INPUT_KIND_NEW,
		HasState: true, StateEventIds: stateIDs}
	outliersDone := time.Now()
	resp, err = s.rooms.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{join}})
	s.log.Debug("input a joined room", zap.Int("outliers", len(outliers)), zap.Duration("outliers_input", outliersDone.Sub(started)),
		zap.Duration("join_input", time.Since(outliersDone)))
	if err != nil {
		return fmt.Errorf("input the join: %w", err)
	}
	if r := resp.GetResults(); len(r) != 1 || !stored(r[0].GetStatus()) {
		return fmt.Errorf("%w: the join: %s", ErrNotAccepted, describe(r))
	}
	return nil
}

func stored(st roomserverv1.InputStatus) bool {
	return st == roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED || st == roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE
}

func describe(rs []*roomserverv1.InputEventResult) string {
	if len(rs) == 0 {
		return "no result"
	}
	return fmt.Sprintf("%s %s %v", rs[0].GetStatus(), rs[0].GetReason(), rs[0].GetMissingEventIds())
}

// eventProvider fetches events a server's answer refers to but lacks
// (/event), for gomatrixserverlib's auth chain checks.
func (s *Service) eventProvider(ctx context.Context, fc fclient.FederationClient, server spec.ServerName) gomatrixserverlib.EventProvider {
	return func(roomVer gomatrixserverlib.RoomVersion, eventIDs []string) ([]gomatrixserverlib.PDU, error) {
		verImpl, err := gomatrixserverlib.GetRoomVersion(roomVer)
		if err != nil {
			return nil, err
		}
		var out []gomatrixserverlib.PDU
		for _, id := range eventIDs {
			txn, err := fc.GetEvent(ctx, s.serverName, server, id)
			if err != nil {
				return nil, err
			}
			for _, raw := range txn.PDUs {
				ev, err := verImpl.NewEventFromUntrustedJSON(raw)
				if err != nil {
					return nil, err
				}
				if ev.EventID() != id {
					return nil, errors.New("the server sent another event than asked for")
				}
				out = append(out, ev)
			}
		}
		return out, nil
	}
}
