package media

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/draw"
	_ "image/gif" // decoders for image.Decode
	"image/jpeg"
	"image/png"
	"io"
	"mime"
	"net/http"

	"go.uber.org/zap"
	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/media/store"
)

// thumbnailable are the image types thumbnails are made of.
var thumbnailable = map[string]bool{"image/jpeg": true, "image/png": true, "image/gif": true, "image/webp": true}

// maxThumbnailSide bounds the requested width and height.
const maxThumbnailSide = 4096

// thumbnailSizes are the spec's recommended thumbnail sizes, smallest
// first, by method.
var thumbnailSizes = map[string][][2]int{
	"crop":  {{32, 32}, {96, 96}},
	"scale": {{320, 240}, {640, 480}, {800, 600}},
}

// standardThumbnail returns the smallest recommended size at least as
// large as asked, by the asked method or else by scale; ok is false when
// the request is larger than all of them (the original is served).
func standardThumbnail(width, height int, method string) (int, int, string, bool) {
	for _, m := range []string{method, "scale"} {
		for _, sz := range thumbnailSizes[m] {
			if sz[0] >= width && sz[1] >= height {
				return sz[0], sz[1], m, true
			}
		}
	}
	return 0, 0, "", false
}

// thumbnailMedia is GET /_matrix/client/v1/media/thumbnail/...: a scaled or
// cropped copy in one of the spec's five recommended sizes, never smaller
// than asked (unless the image is) and never upscaled: an image no larger
// than asked is served as it is. Thumbnails are made on the first request
// and kept in the storage.
func (s *Service) thumbnailMedia(r *http.Request, _ *caller) (any, error) {
	return s.thumbnail(r, nil)
}

// thumbnail answers a thumbnail request: of local, when given (federation
// media has loaded it), else of the path's media (local, or remote).
func (s *Service) thumbnail(r *http.Request, local *store.Media) (any, error) {
	width, err := queryInt(r, "width", 0)
	if err != nil {
		return nil, err
	}
	height, err := queryInt(r, "height", 0)
	if err != nil {
		return nil, err
	}
	if width < 1 || height < 1 || width > maxThumbnailSide || height > maxThumbnailSide {
		return nil, matrixhttp.InvalidParam(fmt.Sprintf("width and height must be between 1 and %d", maxThumbnailSide))
	}
	method := r.URL.Query().Get("method")
	if method == "" {
		method = "scale"
	}
	if method != "scale" && method != "crop" {
		return nil, matrixhttp.InvalidParam("method must be crop or scale")
	}
	var m store.Media
	if local != nil {
		m = *local
	} else {
		if ref, remote, err := s.remote.ref(r); err != nil {
			return nil, err
		} else if remote {
			return s.remote.thumbnail(r, ref, int(width), int(height), method)
		}
		if m, err = s.loadMedia(r); err != nil {
			return nil, err
		}
	}
	ctx := r.Context()
	original := func() (any, error) { return s.openContent(ctx, m.StorageKey, m.ContentType, "", m.Size) }
	w, h, method, ok := standardThumbnail(int(width), int(height), method)
	if !ok {
		return original() // larger than any recommended size
	}
	if t, err := s.store.ThumbnailOf(ctx, m.MediaID, w, h, method); err == nil {
		return s.openContent(ctx, t.StorageKey, t.ContentType, "", t.Size)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	base, _, _ := mime.ParseMediaType(m.ContentType)
	if !thumbnailable[base] {
		return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Cannot make a thumbnail of %q content", base)
	}
	ctype, data, same, err := s.makeThumbnail(ctx, m, w, h, method)
	if err != nil {
		return nil, err
	}
	if same {
		return original()
	}
	t := store.Thumbnail{MediaID: m.MediaID, Width: w, Height: h, Method: method, ContentType: ctype,
		Size: int64(len(data)), StorageKey: thumbnailKey(m.MediaID, w, h, method)}
	if err := s.keepThumbnail(context.WithoutCancel(ctx), t, data); err != nil {
		// The thumbnail is made: serve it even if it could not be kept.
		s.log.Warn("keeping a thumbnail failed", zap.String("media_id", m.MediaID), zap.Error(err))
	}
	return &contentResponse{contentType: ctype, size: int64(len(data)), body: io.NopCloser(bytes.NewReader(data))}, nil
}

// keepThumbnail stores a thumbnail's content and row; a concurrent request
// that kept the same one first wins, and this content is deleted.
func (s *Service) keepThumbnail(ctx context.Context, t store.Thumbnail, data []byte) error {
	if _, err := s.putContent(ctx, t.StorageKey, bytes.NewReader(data), int64(len(data)), -1); err != nil {
		return err
	}
	stored, err := s.store.PutThumbnail(ctx, t)
	if err != nil || !stored {
		s.discard(ctx, t.StorageKey)
	}
	return err
}

// makeThumbnail scales (or scales and crops) the stored image so that it
// covers width × height, keeping its aspect ratio; crop then cuts the
// middle width × height. The image's size is read from its header first
// (images over max_thumbnail_pixels get 413 before any decoding); the
// decoded image is in memory, the encoded one streams from the storage.
// same reports that the image is no larger than asked in both directions
// and is to be served as it is (never upscaled).
func (s *Service) makeThumbnail(ctx context.Context, m store.Media, width, height int, method string) (ctype string, data []byte, same bool, err error) {
	rc, err := s.content.Get(ctx, m.StorageKey)
	if err != nil {
		return "", nil, false, err
	}
	defer rc.Close()
	// DecodeConfig reads only the header; what it read stays in the
	// buffer for Decode.
	br := bufio.NewReaderSize(rc, 64<<10)
	var header bytes.Buffer
	cfg, format, err := image.DecodeConfig(io.TeeReader(br, &header))
	if err != nil {
		return "", nil, false, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "The content is not an image that can be read: %v", err)
	}
	if int64(cfg.Width)*int64(cfg.Height) > s.cfg.MaxThumbnailPixels {
		return "", nil, false, tooLarge("The image is too large to thumbnail")
	}
	if cfg.Width <= width && cfg.Height <= height {
		return "", nil, true, nil
	}
	src, _, err := image.Decode(io.MultiReader(&header, br))
	if err != nil {
		return "", nil, false, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "The image cannot be decoded: %v", err)
	}
	sw, sh := src.Bounds().Dx(), src.Bounds().Dy()
	// The smallest scale at which the image covers the box, at most 1.
	scale := min(max(float64(width)/float64(sw), float64(height)/float64(sh)), 1)
	dw, dh := max(int(float64(sw)*scale+0.5), 1), max(int(float64(sh)*scale+0.5), 1)
	scaled := image.NewRGBA(image.Rect(0, 0, dw, dh))
	xdraw.BiLinear.Scale(scaled, scaled.Bounds(), src, src.Bounds(), draw.Src, nil)
	var out image.Image = scaled
	if method == "crop" {
		cw, ch := min(width, dw), min(height, dh)
		x0, y0 := (dw-cw)/2, (dh-ch)/2
		out = scaled.SubImage(image.Rect(x0, y0, x0+cw, y0+ch))
	}
	var buf bytes.Buffer
	// PNG keeps transparency (PNG and GIF sources); photos go to JPEG.
	if format == "png" || format == "gif" {
		ctype = "image/png"
		err = png.Encode(&buf, out)
	} else {
		ctype = "image/jpeg"
		err = jpeg.Encode(&buf, out, &jpeg.Options{Quality: 85})
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("encode thumbnail: %w", err)
	}
	return ctype, buf.Bytes(), false, nil
}
