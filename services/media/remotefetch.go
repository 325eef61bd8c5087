package media

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// maxRemoteErrorBody bounds what is read of a remote server's error
// answer or of the metadata part of a multipart answer.
const maxRemoteErrorBody = 64 << 10

// remoteAnswer is a remote server's content, open for reading: from the
// multipart answer of the federation media endpoints (or where its
// Location points), or from the deprecated endpoint.
type remoteAnswer struct {
	body        io.Reader
	contentType string
	fileName    string
	// length is the declared length, -1 if unknown.
	length  int64
	closers []io.Closer
}

func (a *remoteAnswer) Close() {
	for _, c := range a.closers {
		_ = c.Close()
	}
}

// get asks server for media: first fedURI on the authenticated
// federation endpoint (X-Matrix signed), and, when the server does not
// know that endpoint (404 or 405 that is not M_NOT_FOUND, or 400
// M_UNRECOGNIZED), legacyURI on the deprecated unauthenticated one, as
// the spec allows (legacyURI carries allow_remote=false).
func (rm *remoteMedia) get(ctx context.Context, server spec.ServerName, fedURI, legacyURI string) (*remoteAnswer, error) {
	resp, err := rm.fed.Stream(ctx, server, fedURI)
	if err != nil {
		return nil, remoteTransportError(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxRemoteErrorBody))
		resp.Body.Close()
		if !unrecognized(resp.StatusCode, body) {
			return nil, remoteStatusError(resp.StatusCode, body)
		}
		return rm.legacyGet(ctx, server, legacyURI)
	}
	a, err := rm.readMultipart(ctx, resp)
	if err != nil {
		resp.Body.Close()
		return nil, err
	}
	return a, nil
}

// unrecognized tells whether an error answer means the server does not
// serve the endpoint.
func unrecognized(status int, body []byte) bool {
	code := errcodeOf(body)
	switch status {
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return code != "M_NOT_FOUND"
	case http.StatusBadRequest:
		return code == "M_UNRECOGNIZED"
	}
	return false
}

func errcodeOf(body []byte) string {
	var e struct {
		ErrCode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	return e.ErrCode
}

// legacyGet is the fallback on the deprecated /_matrix/media/v3 endpoint:
// the content is the answer's body.
func (rm *remoteMedia) legacyGet(ctx context.Context, server spec.ServerName, uri string) (*remoteAnswer, error) {
	resp, err := rm.fed.StreamUnsigned(ctx, server, uri)
	if err != nil {
		return nil, remoteTransportError(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxRemoteErrorBody))
		resp.Body.Close()
		return nil, remoteStatusError(resp.StatusCode, body)
	}
	return &remoteAnswer{body: resp.Body, contentType: safeContentType(resp.Header.Get("Content-Type")),
		fileName: dispositionName(resp.Header.Get("Content-Disposition")), length: resp.ContentLength,
		closers: []io.Closer{resp.Body}}, nil
}

// readMultipart reads the federation media endpoints' answer: a
// multipart/mixed body of exactly two parts, the JSON metadata, then the
// content itself or a Location header naming where it is.
func (rm *remoteMedia) readMultipart(ctx context.Context, resp *http.Response) (*remoteAnswer, error) {
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/mixed" || params["boundary"] == "" {
		return nil, errRemoteGarbage("the answer is not multipart/mixed with a boundary")
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		return nil, errRemoteGarbage("no metadata part")
	}
	metaJSON, err := io.ReadAll(io.LimitReader(meta, maxRemoteErrorBody+1))
	if err != nil || len(metaJSON) > maxRemoteErrorBody || !json.Valid(metaJSON) {
		return nil, errRemoteGarbage("the metadata part is not JSON")
	}
	part, err := mr.NextPart()
	if err != nil {
		return nil, errRemoteGarbage("no content part")
	}
	if loc := part.Header.Get("Location"); loc != "" {
		resp.Body.Close()
		return rm.followLocation(ctx, loc)
	}
	return &remoteAnswer{body: part, contentType: safeContentType(part.Header.Get("Content-Type")),
		fileName: dispositionName(part.Header.Get("Content-Disposition")), length: -1,
		closers: []io.Closer{resp.Body}}, nil
}

// followLocation fetches the content where a multipart answer's Location
// points (never cached: the spec says the URL may expire), through the
// same address rule as federation requests.
func (rm *remoteMedia) followLocation(ctx context.Context, loc string) (*remoteAnswer, error) {
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errRemoteGarbage("the Location is not an http(s) URL")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, errRemoteGarbage("the Location is not a URL")
	}
	resp, err := rm.web.Do(req)
	if err != nil {
		return nil, remoteTransportError(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The remote media's Location answered %d", resp.StatusCode)
	}
	return &remoteAnswer{body: resp.Body, contentType: safeContentType(resp.Header.Get("Content-Type")),
		fileName: dispositionName(resp.Header.Get("Content-Disposition")), length: resp.ContentLength,
		closers: []io.Closer{resp.Body}}, nil
}

// newRemoteWebClient is the client of Location URLs: federation's
// transport rules, at most 5 redirects, http(s) only.
func newRemoteWebClient(fed *federation.Client) *http.Client {
	return &http.Client{Transport: fed.WebTransport(), CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		if req.URL.Scheme != "https" && req.URL.Scheme != "http" {
			return errors.New("redirect to a URL that is not http(s)")
		}
		return nil
	}}
}

func errRemoteGarbage(what string) error {
	return matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The remote server's answer is malformed: %s", what)
}

// remoteTransportError is the Matrix error of a remote server that could
// not be asked: federation off (404, as if remote media were off),
// refused or unreachable addresses (502), a timeout (504).
func remoteTransportError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, federation.ErrDisabled):
		return errRemoteUnavailable()
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return matrixhttp.Errorf(http.StatusGatewayTimeout, "M_UNKNOWN", "The remote server did not answer in time")
	}
	return matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The remote server could not be reached: %v", err)
}

// remoteStatusError maps a remote server's error answer to ours: 404
// M_NOT_FOUND, 429 with its retry_after_ms, 502 M_TOO_LARGE for content
// too large (502 or 413), 504 M_NOT_YET_UPLOADED, 400 for what it cannot
// thumbnail; anything else is 502.
func remoteStatusError(status int, body []byte) error {
	code := errcodeOf(body)
	switch {
	case status == http.StatusNotFound:
		return matrixhttp.NotFound("Remote media not found")
	case status == http.StatusTooManyRequests:
		var e struct {
			RetryAfterMS int64 `json:"retry_after_ms"`
		}
		_ = json.Unmarshal(body, &e)
		return matrixhttp.LimitExceeded(max(e.RetryAfterMS, 1))
	case code == "M_TOO_LARGE" || status == http.StatusRequestEntityTooLarge:
		return matrixhttp.Errorf(http.StatusBadGateway, "M_TOO_LARGE", "The remote media is too large")
	case code == "M_NOT_YET_UPLOADED":
		return matrixhttp.Errorf(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "The remote media has not been uploaded yet")
	case status == http.StatusBadRequest:
		return matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "The remote server refused the request (%s)", code)
	}
	return matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The remote server answered %d", status)
}

// safeContentType keeps a valid media type (re-formatted), else "".
func safeContentType(ct string) string {
	base, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return ""
	}
	return mime.FormatMediaType(base, params)
}

// dispositionName is the file name of a Content-Disposition header, if it
// has a usable one (filename* decoded; at most 255 bytes of valid UTF-8
// without control characters or slashes).
func dispositionName(cd string) string {
	_, params, err := mime.ParseMediaType(cd)
	if err != nil {
		return ""
	}
	name := params["filename"]
	if name == "" || len(name) > 255 || !utf8.ValidString(name) || strings.ContainsAny(name, "/\\") ||
		strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return ""
	}
	return name
}
