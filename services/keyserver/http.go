package keyserver

import (
	"encoding/json"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// serveKeys answers GET /_matrix/key/v2/server with the server's keys,
// signed by the current key, as the server-server spec requires.
func (s *Service) serveKeys(w http.ResponseWriter, r *http.Request) {
	raw, err := json.Marshal(s.keysBody(time.Now()))
	if err == nil {
		raw, _, err = s.sign(raw)
	}
	if err != nil {
		s.log.Error("sign server keys", zap.Error(err))
		matrixhttp.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(raw)
}
