package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/services/media/store"
)

// Why a fetch of a web page or image failed; preview.go turns them into
// Matrix errors.
var (
	// errFetchRefused: the URL (or a redirect) is not to be fetched: not
	// http(s), a denied host, or an address that is not public.
	errFetchRefused = errors.New("refused to fetch")
	// errFetchTimeout: the fetch took longer than allowed.
	errFetchTimeout = errors.New("fetch timed out")
	// errFetchFailed: the site could not be reached or answered with an
	// error.
	errFetchFailed = errors.New("fetch failed")
	// errNotImage: the answer is not an image (or is too large to keep).
	errNotImage = errors.New("not an image that can be kept")
)

// webClient fetches pages and images for URL previews through the
// SSRF-guarding dialer of pkg/federation (with url_preview's own list of
// allowed networks), following at most max_redirects redirects, each
// checked like the URL itself.
type webClient struct {
	cfg    URLPreviewConfig
	denied []string
	client *http.Client
}

func newWebClient(cfg URLPreviewConfig, resolver federation.Resolver) (*webClient, error) {
	tr, err := federation.NewWebTransport(federation.WebOptions{AllowedNetworks: cfg.AllowedNetworks, Resolver: resolver})
	if err != nil {
		return nil, fmt.Errorf("url_preview: %w", err)
	}
	w := &webClient{cfg: cfg}
	for _, h := range cfg.DeniedHosts {
		w.denied = append(w.denied, normalHost(h))
	}
	w.client = &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) > cfg.MaxRedirects {
			return fmt.Errorf("%w: more than %d redirects", errFetchFailed, cfg.MaxRedirects)
		}
		return w.check(req.URL)
	}}
	return w, nil
}

// normalHost is a host name in the form hosts are compared in.
func normalHost(h string) string {
	return strings.TrimSuffix(strings.Trim(strings.ToLower(strings.TrimSpace(h)), "[]"), ".")
}

// check refuses URLs that are not to be fetched: only http and https,
// with a host, without credentials, and not on the deny list.
func (w *webClient) check(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: only http and https URLs are fetched", errFetchRefused)
	}
	if u.Host == "" || u.User != nil {
		return fmt.Errorf("%w: the URL has no host, or has credentials", errFetchRefused)
	}
	host := normalHost(u.Hostname())
	for _, d := range w.denied {
		if host == d || strings.HasSuffix(host, "."+d) {
			return fmt.Errorf("%w: %s is on the deny list", errFetchRefused, host)
		}
	}
	return nil
}

// get fetches u and returns its answer, which has a 2xx status. The body
// is the caller's to bound and close.
func (w *webClient) get(ctx context.Context, u *url.URL, accept string) (*http.Response, error) {
	if err := w.check(u); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errFetchRefused, err)
	}
	req.Header.Set("User-Agent", "Myelin URL preview (Matrix homeserver)")
	req.Header.Set("Accept", accept)
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, fetchError(ctx, err)
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s answered %d", errFetchFailed, u.Host, resp.StatusCode)
	}
	return resp, nil
}

// fetchError classifies a failed request: refused addresses (the
// dialer's rule, the deny list, a bad redirect), timeouts, the rest.
func fetchError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, federation.ErrForbiddenAddress), errors.Is(err, errFetchRefused):
		return fmt.Errorf("%w: %v", errFetchRefused, err)
	case errors.Is(err, errFetchFailed):
		return err
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %v", errFetchTimeout, err)
	}
	return fmt.Errorf("%w: %v", errFetchFailed, err)
}

// keptImage is an image from the web kept as local media.
type keptImage struct {
	mediaID       string
	contentType   string
	size          int64
	width, height int
}

// headBuffer keeps the first bytes written to it (an image's header, for
// its dimensions) and drops the rest.
type headBuffer struct {
	bytes.Buffer
	max int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := h.max - h.Len(); room > 0 {
		h.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// keepImage streams an image answer into the storage as local media of
// no user (an empty uploader), at most limit bytes (errNotImage beyond, and for
// an answer that is not an image); its dimensions come from its header
// when Go can read it.
func (p *previewer) keepImage(ctx context.Context, resp *http.Response, limit int64) (keptImage, error) {
	s := p.svc
	base, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(base, "image/") {
		return keptImage{}, fmt.Errorf("%w: content type %q", errNotImage, resp.Header.Get("Content-Type"))
	}
	if resp.ContentLength > limit {
		return keptImage{}, fmt.Errorf("%w: %d bytes", errNotImage, resp.ContentLength)
	}
	m := store.Media{MediaID: newMediaID(), ContentType: mime.FormatMediaType(base, params)}
	m.StorageKey = contentKey(m.MediaID)
	head := &headBuffer{max: 64 << 10}
	size := resp.ContentLength
	if size <= 0 {
		size = -1
	}
	n, err := s.putContent(ctx, m.StorageKey, io.TeeReader(resp.Body, head), size, limit)
	switch {
	case errors.Is(err, ErrTooLarge):
		return keptImage{}, fmt.Errorf("%w: over %d bytes", errNotImage, limit)
	case errors.Is(err, errReadBody):
		return keptImage{}, fetchError(ctx, err)
	case err != nil:
		return keptImage{}, err
	}
	m.Size, m.UploadedTS = n, s.now().UnixMilli()
	if err := s.store.PutMedia(ctx, m, 0); err != nil {
		s.discard(ctx, m.StorageKey)
		return keptImage{}, err
	}
	img := keptImage{mediaID: m.MediaID, contentType: m.ContentType, size: n}
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(head.Bytes())); err == nil {
		img.width, img.height = cfg.Width, cfg.Height
	}
	return img, nil
}
