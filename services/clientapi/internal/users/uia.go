package users

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// uiaSessionMaxAge is how long a user-interactive auth session stays valid.
const uiaSessionMaxAge = time.Hour

// The UIA stages Myelin offers.
const (
	authDummy    = "m.login.dummy"
	authPassword = "m.login.password"
	authRegToken = "m.login.registration_token"
)

// UIA purposes: a session is bound to the request it was opened for.
const (
	purposeRegister      = "register"
	purposePassword      = "password"
	purposeDeactivate    = "deactivate"
	purposeDeleteDevices = "delete_devices"
	purposeLoginToken    = "get_login_token"
	PurposeCrossSigning  = "device_signing_upload"
)

// AuthData is the "auth" object of a UIA request: the union of the fields
// the stages use.
type AuthData struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Identifier *userIdentifier `json:"identifier"`
	// User is the deprecated top-level user of m.login.password.
	User     string `json:"user"`
	Password string `json:"password"`
	// Token is m.login.registration_token's token.
	Token string `json:"token"`
}

// userIdentifier is an "identifier" object (login and m.login.password).
type userIdentifier struct {
	Type    string `json:"type"`
	User    string `json:"user"`
	Medium  string `json:"medium"`
	Address string `json:"address"`
}

// uiaFlows are the flows that complete a session of the given purpose.
// Registration depends on the registration mode; everything else asks the
// user for their password.
func (s *Accounts) uiaFlows(purpose string) [][]string {
	if purpose != purposeRegister {
		return [][]string{{authPassword}}
	}
	if s.cfg.Registration.Mode == RegistrationToken {
		return [][]string{{authRegToken}}
	}
	return [][]string{{authDummy}}
}

// runUIA runs user-interactive auth for one request made for purpose by
// userID ("" when registering). It returns the completed session, which
// the caller must finish (finishUIA) after doing the work; otherwise the
// 401 challenge or another error to send.
//
// A request without auth opens a session. A stage submitted without a
// session opens one on the fly (Synapse accepts m.login.dummy that way,
// and clients rely on it). Stages completed through the fallback web page
// count: a later request with just the session succeeds.
func (s *Accounts) RunUIA(ctx context.Context, purpose, userID string, auth *AuthData) (accounts.UIASession, error) {
	flows := s.uiaFlows(purpose)
	if auth == nil || auth.Session == "" {
		sess := accounts.UIASession{ID: randomBase64(18), UserID: userID, Purpose: purpose}
		if err := s.accounts.CreateUIASession(ctx, sess, uiaSessionMaxAge); err != nil {
			return accounts.UIASession{}, err
		}
		if auth == nil {
			return accounts.UIASession{}, &httpapi.UIAChallenge{Flows: flows, Session: sess.ID}
		}
		auth.Session = sess.ID
	}
	sess, err := s.accounts.GetUIASession(ctx, auth.Session, uiaSessionMaxAge)
	if errors.Is(err, store.ErrNotFound) {
		return accounts.UIASession{}, httpapi.UnknownError(http.StatusBadRequest, "Unknown or expired UIA session")
	}
	if err != nil {
		return accounts.UIASession{}, err
	}
	if sess.Purpose != purpose || sess.UserID != userID {
		return accounts.UIASession{}, matrixhttp.Forbidden("The UIA session belongs to another request")
	}
	if auth.Type != "" {
		if err := s.uiaStage(ctx, &sess, flows, auth); err != nil {
			return accounts.UIASession{}, err
		}
	}
	for _, f := range flows {
		if !slices.ContainsFunc(f, func(stage string) bool { return !slices.Contains(sess.Completed, stage) }) {
			return sess, nil
		}
	}
	return accounts.UIASession{}, &httpapi.UIAChallenge{Flows: flows, Session: sess.ID, Completed: sess.Completed}
}

// uiaStage attempts one stage and records it in sess when it succeeds.
// A failed attempt is a 401 challenge carrying the errcode.
func (s *Accounts) uiaStage(ctx context.Context, sess *accounts.UIASession, flows [][]string, auth *AuthData) error {
	fail := func(code, msg string) error {
		return &httpapi.UIAChallenge{Flows: flows, Session: sess.ID, Completed: sess.Completed, ErrCode: code, Message: msg}
	}
	if !slices.ContainsFunc(flows, func(f []string) bool { return slices.Contains(f, auth.Type) }) {
		return fail("M_UNRECOGNIZED", "Unsupported authentication type")
	}
	switch auth.Type {
	case authDummy:
	case authPassword:
		ok, err := s.uiaPassword(ctx, sess.UserID, auth)
		if err != nil {
			return err
		}
		if !ok {
			return fail("M_FORBIDDEN", "Invalid password")
		}
	case authRegToken:
		if auth.Token == "" || len(auth.Token) > 64 {
			return fail("M_INVALID_PARAM", "A registration token is required")
		}
		err := s.accounts.ReserveRegistrationToken(ctx, sess.ID, auth.Token, s.now().UnixMilli())
		if errors.Is(err, accounts.ErrTokenInvalid) {
			return fail("M_FORBIDDEN", "Invalid registration token")
		}
		if err != nil {
			return err
		}
	}
	if !slices.Contains(sess.Completed, auth.Type) {
		if err := s.accounts.CompleteUIAStage(ctx, sess.ID, auth.Type); err != nil {
			return err
		}
		sess.Completed = append(sess.Completed, auth.Type)
	}
	return nil
}

// uiaPassword checks an m.login.password stage: the identifier must name
// the session's own user and the password must be theirs. An identifier
// naming anyone else is 403 M_FORBIDDEN outright, not a new challenge:
// no other user's password can authorise this user's request, whether or
// not it is right (so the answer tells nothing about it).
func (s *Accounts) uiaPassword(ctx context.Context, userID string, auth *AuthData) (bool, error) {
	user := auth.User
	if auth.Identifier != nil {
		if auth.Identifier.Type != "m.id.user" {
			return false, nil
		}
		user = auth.Identifier.User
	}
	if user == "" {
		// Clients commonly omit the identifier when re-authenticating.
		user = userID
	}
	localpart, ok := s.localpartOf(user)
	if !ok || s.userID(localpart) != userID {
		return false, matrixhttp.Forbidden("The authentication names another user")
	}
	hash, err := s.accounts.PasswordHash(ctx, localpart)
	if errors.Is(err, store.ErrNotFound) {
		checkPassword(dummyHash(), auth.Password)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return checkPassword(hash, auth.Password), nil
}

// finishUIA forgets a completed session.
func (s *Accounts) FinishUIA(ctx context.Context, sess accounts.UIASession) error {
	return s.accounts.DeleteUIASession(ctx, sess.ID)
}
