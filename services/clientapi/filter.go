package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// filterUser checks the {userId} of the filter endpoints is the caller.
func filterUser(r *http.Request, dev *httpapi.Device) error {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return err
	}
	if userID != dev.UserID {
		return matrixhttp.Forbidden("Cannot use filters of other users")
	}
	return nil
}

// createFilter is POST /user/{userId}/filter.
func (s *Service) createFilter(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := filterUser(r, dev); err != nil {
		return nil, err
	}
	body, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	if _, err := clientevent.ParseFilter(body); err != nil {
		return nil, err
	}
	id, err := s.store.CreateFilter(r.Context(), dev.UserID, body)
	if err != nil {
		return nil, err
	}
	return map[string]string{"filter_id": strconv.FormatInt(id, 10)}, nil
}

// getFilter is GET /user/{userId}/filter/{filterId}.
func (s *Service) getFilter(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := filterUser(r, dev); err != nil {
		return nil, err
	}
	idStr, err := httpapi.PathParam(r, "filterId")
	if err != nil {
		return nil, err
	}
	id, err := strconv.ParseInt(idStr, 10, 64)
	if err != nil {
		return nil, matrixhttp.NotFound("No such filter")
	}
	raw, err := s.store.Filter(r.Context(), dev.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such filter")
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(raw), nil
}

// syncFilterParam resolves /sync's filter parameter: inline JSON when it
// starts with '{', otherwise a filter ID of the caller.
func (s *Service) syncFilterParam(r *http.Request, dev *httpapi.Device) (clientevent.Filter, error) {
	v := r.URL.Query().Get("filter")
	if v == "" {
		return clientevent.Filter{}, nil
	}
	if strings.HasPrefix(strings.TrimSpace(v), "{") {
		if !json.Valid([]byte(v)) {
			return clientevent.Filter{}, matrixhttp.NotJSON("Filter is not valid JSON")
		}
		return clientevent.ParseFilter([]byte(v))
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return clientevent.Filter{}, matrixhttp.InvalidParam("Unknown filter")
	}
	raw, err := s.store.Filter(r.Context(), dev.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return clientevent.Filter{}, matrixhttp.InvalidParam("Unknown filter")
	}
	if err != nil {
		return clientevent.Filter{}, err
	}
	return clientevent.ParseFilter(raw)
}
