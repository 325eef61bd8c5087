package users

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

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
func (s *AccountData) createFilter(r *http.Request, dev *httpapi.Device) (any, error) {
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
func (s *AccountData) getFilter(r *http.Request, dev *httpapi.Device) (any, error) {
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
