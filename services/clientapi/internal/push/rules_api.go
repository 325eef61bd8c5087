package push

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// The push rules API (/pushrules/...). A user's rules are the account
// data m.push_rules: the full rule set, server defaults included, written
// by these endpoints (clients cannot PUT it as account data) and shown in
// /sync. Reads merge it with the current server defaults (mergeRules), so
// a user who never changed a rule gets the defaults.

const RulesType = store.PushRulesType

func (s *Service) pushRuleRoutes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodGet, Path: "/pushrules", Auth: true, Serve: s.getAllPushRules},
		{Method: http.MethodGet, Path: "/pushrules/", Auth: true, Serve: s.getAllPushRules},
		{Method: http.MethodGet, Path: "/pushrules/{scope}", Auth: true, Serve: s.getScopePushRules},
		{Method: http.MethodGet, Path: "/pushrules/{scope}/", Auth: true, Serve: s.getScopePushRules},
		{Method: http.MethodGet, Path: "/pushrules/{scope}/{kind}/{ruleId}", Auth: true, Serve: s.getPushRule},
		{Method: http.MethodPut, Path: "/pushrules/{scope}/{kind}/{ruleId}", Auth: true, Serve: s.putPushRule},
		{Method: http.MethodDelete, Path: "/pushrules/{scope}/{kind}/{ruleId}", Auth: true, Serve: s.deletePushRule},
		{Method: http.MethodGet, Path: "/pushrules/{scope}/{kind}/{ruleId}/{attr}", Auth: true, Serve: s.getPushRuleAttr},
		{Method: http.MethodPut, Path: "/pushrules/{scope}/{kind}/{ruleId}/{attr}", Auth: true, Serve: s.putPushRuleAttr},
	}
}

// loadPushRules returns the user's effective rule set.
func (s *Service) loadPushRules(ctx context.Context, userID string) (pushRuleset, error) {
	raw, err := s.store.GetAccountData(ctx, userID, "", RulesType)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return pushRuleset{}, err
	}
	return mergeRules(userID, raw), nil
}

// pushRulesEvent is the m.push_rules content for a user (defaults when
// they have none stored), for account data reads and initial /sync.
func (s *Service) RulesContent(ctx context.Context, userID string) ([]byte, error) {
	rs, err := s.loadPushRules(ctx, userID)
	if err != nil {
		return nil, err
	}
	return json.Marshal(pushRulesContent{Global: rs})
}

// modifyPushRules applies fn to the user's rule set and stores the result,
// under the user's account data lock (concurrent changes are not lost),
// then wakes their long polls (m.push_rules is in /sync).
func (s *Service) modifyPushRules(ctx context.Context, userID string, fn func(rs *pushRuleset) error) error {
	_, err := s.store.UpdateAccountData(ctx, userID, "", RulesType, func(old []byte) ([]byte, error) {
		rs := mergeRules(userID, old)
		if err := fn(&rs); err != nil {
			return nil, err
		}
		return json.Marshal(pushRulesContent{Global: rs})
	})
	if err != nil {
		return err
	}
	s.wake.AnnounceWake(userID)
	return nil
}

func (s *Service) getAllPushRules(r *http.Request, dev *httpapi.Device) (any, error) {
	rs, err := s.loadPushRules(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return pushRulesContent{Global: rs}, nil
}

func (s *Service) getScopePushRules(r *http.Request, dev *httpapi.Device) (any, error) {
	if _, err := pushScope(r); err != nil {
		return nil, err
	}
	return s.loadPushRules(r.Context(), dev.UserID)
}

func pushScope(r *http.Request) (string, error) {
	scope, err := httpapi.PathParam(r, "scope")
	if err != nil {
		return "", err
	}
	if scope != "global" {
		return "", matrixhttp.InvalidParam("Unknown push rule scope " + scope)
	}
	return scope, nil
}

// pushRuleTarget reads scope, kind and rule ID from the path.
func pushRuleTarget(r *http.Request) (kind, ruleID string, err error) {
	if _, err = pushScope(r); err != nil {
		return "", "", err
	}
	if kind, err = httpapi.PathParam(r, "kind"); err != nil {
		return "", "", err
	}
	if !slices.Contains(pushRuleKinds, kind) {
		return "", "", matrixhttp.InvalidParam("Unknown push rule kind " + kind)
	}
	if ruleID, err = httpapi.PathParam(r, "ruleId"); err != nil {
		return "", "", err
	}
	if ruleID == "" {
		return "", "", matrixhttp.InvalidParam("Empty rule ID")
	}
	return kind, ruleID, nil
}

func ruleNotFound() error { return matrixhttp.NotFound("The push rule was not found.") }

func findRule(rules []pushRule, ruleID string) int {
	return slices.IndexFunc(rules, func(r pushRule) bool { return r.RuleID == ruleID })
}

func (s *Service) getPushRule(r *http.Request, dev *httpapi.Device) (any, error) {
	kind, ruleID, err := pushRuleTarget(r)
	if err != nil {
		return nil, err
	}
	rs, err := s.loadPushRules(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	rules := *rs.kind(kind)
	i := findRule(rules, ruleID)
	if i < 0 {
		return nil, ruleNotFound()
	}
	return rules[i], nil
}

// validActions checks an actions array: "notify" (the historical
// "dont_notify" and "coalesce" are accepted, kept as given and ignored by
// evaluation, as the spec asks) or set_tweak objects.
func validActions(acts []json.RawMessage) error {
	for _, a := range acts {
		var s string
		if json.Unmarshal(a, &s) == nil {
			if s != "notify" && s != "dont_notify" && s != "coalesce" {
				return matrixhttp.InvalidParam("Unknown action " + s)
			}
			continue
		}
		var t struct {
			SetTweak *string `json:"set_tweak"`
		}
		if json.Unmarshal(a, &t) != nil || t.SetTweak == nil || *t.SetTweak == "" {
			return matrixhttp.InvalidParam("Actions must be strings or set_tweak objects")
		}
	}
	return nil
}

func (s *Service) putPushRule(r *http.Request, dev *httpapi.Device) (any, error) {
	kind, ruleID, err := pushRuleTarget(r)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(ruleID, ".") {
		return nil, matrixhttp.InvalidParam("Rule IDs starting with '.' are reserved for server-default rules")
	}
	if strings.ContainsAny(ruleID, `/\`) {
		return nil, matrixhttp.InvalidParam("Rule IDs may not contain '/' or '\\'")
	}
	switch {
	case kind == "room" && !strings.HasPrefix(ruleID, "!"):
		return nil, matrixhttp.InvalidParam("The rule ID of a room rule must be a room ID")
	case kind == "sender" && !strings.HasPrefix(ruleID, "@"):
		return nil, matrixhttp.InvalidParam("The rule ID of a sender rule must be a user ID")
	}
	var body struct {
		Actions    *[]json.RawMessage `json:"actions"`
		Conditions *[]pushCondition   `json:"conditions"`
		Pattern    *string            `json:"pattern"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
		return nil, err
	}
	if body.Actions == nil {
		return nil, matrixhttp.MissingParam("actions is required")
	}
	if err := validActions(*body.Actions); err != nil {
		return nil, err
	}
	rule := pushRule{RuleID: ruleID, Enabled: true, Actions: *body.Actions}
	switch kind {
	case "content":
		if body.Pattern == nil {
			return nil, matrixhttp.MissingParam("pattern is required for content rules")
		}
		rule.Pattern = body.Pattern
	case "override", "underride":
		rule.Conditions = conds()
		if body.Conditions != nil {
			for _, c := range *body.Conditions {
				if c.Kind == "" {
					return nil, matrixhttp.InvalidParam("Every condition needs a kind")
				}
			}
			rule.Conditions = body.Conditions
		}
	}
	q := r.URL.Query()
	before, after := q.Get("before"), q.Get("after")
	for _, rel := range []string{before, after} {
		if strings.HasPrefix(rel, ".") {
			return nil, matrixhttp.InvalidParam("A rule cannot be placed relative to a server-default rule")
		}
	}

	err = s.modifyPushRules(r.Context(), dev.UserID, func(rs *pushRuleset) error {
		rules := *rs.kind(kind)
		at := findRule(rules, ruleID)
		if at >= 0 {
			rule.Enabled = rules[at].Enabled // an update keeps the enabled flag
			if before == "" && after == "" {
				rules[at] = rule
				return nil
			}
			rules = slices.Delete(rules, at, at+1)
		}
		var pos int
		switch {
		case before != "":
			if pos = findRule(rules, before); pos < 0 {
				return matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "before/after rule not found: %s", before)
			}
		case after != "":
			if pos = findRule(rules, after); pos < 0 {
				return matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "before/after rule not found: %s", after)
			}
			pos++
		default:
			// The most important user-defined rule of its kind: after the
			// master rule, before every other rule.
			for pos < len(rules) && rules[pos].RuleID == ".m.rule.master" {
				pos++
			}
		}
		*rs.kind(kind) = slices.Insert(rules, pos, rule)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Service) deletePushRule(r *http.Request, dev *httpapi.Device) (any, error) {
	kind, ruleID, err := pushRuleTarget(r)
	if err != nil {
		return nil, err
	}
	err = s.modifyPushRules(r.Context(), dev.UserID, func(rs *pushRuleset) error {
		rules := *rs.kind(kind)
		i := findRule(rules, ruleID)
		if i < 0 {
			return ruleNotFound()
		}
		if rules[i].Default {
			return matrixhttp.InvalidParam("Server-default rules cannot be deleted")
		}
		*rs.kind(kind) = slices.Delete(rules, i, i+1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func pushRuleAttr(r *http.Request) (string, error) {
	attr, err := httpapi.PathParam(r, "attr")
	if err != nil {
		return "", err
	}
	if attr != "enabled" && attr != "actions" {
		return "", matrixhttp.Unrecognized("Unknown push rule attribute " + attr)
	}
	return attr, nil
}

func (s *Service) getPushRuleAttr(r *http.Request, dev *httpapi.Device) (any, error) {
	attr, err := pushRuleAttr(r)
	if err != nil {
		return nil, err
	}
	res, err := s.getPushRule(r, dev)
	if err != nil {
		return nil, err
	}
	rule := res.(pushRule)
	if attr == "enabled" {
		return map[string]bool{"enabled": rule.Enabled}, nil
	}
	return map[string][]json.RawMessage{"actions": rule.Actions}, nil
}

func (s *Service) putPushRuleAttr(r *http.Request, dev *httpapi.Device) (any, error) {
	attr, err := pushRuleAttr(r)
	if err != nil {
		return nil, err
	}
	kind, ruleID, err := pushRuleTarget(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Enabled *bool              `json:"enabled"`
		Actions *[]json.RawMessage `json:"actions"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
		return nil, err
	}
	switch {
	case attr == "enabled" && body.Enabled == nil:
		return nil, matrixhttp.MissingParam("enabled is required")
	case attr == "actions" && body.Actions == nil:
		return nil, matrixhttp.MissingParam("actions is required")
	case attr == "actions":
		if err := validActions(*body.Actions); err != nil {
			return nil, err
		}
	}
	err = s.modifyPushRules(r.Context(), dev.UserID, func(rs *pushRuleset) error {
		rules := *rs.kind(kind)
		i := findRule(rules, ruleID)
		if i < 0 {
			return ruleNotFound()
		}
		if attr == "enabled" {
			rules[i].Enabled = *body.Enabled
		} else {
			rules[i].Actions = *body.Actions
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
