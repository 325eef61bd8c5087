package media

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	"github.com/myelin-chat/myelin/services/media/store"
)

// handler implements the generated MediaService server. Errors become
// gRPC statuses only here.
type handler struct {
	mediav1.UnimplementedMediaServiceServer
	svc *Service
}

var _ mediav1.MediaServiceServer = (*handler)(nil)

func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrTooLarge):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// ImportMedia takes one media item from another service: the header,
// then the content in chunks (import.go).
func (h *handler) ImportMedia(stream mediav1.MediaService_ImportMediaServer) error {
	first, err := stream.Recv()
	if err != nil {
		return status.Error(codes.InvalidArgument, "the stream ended before the header")
	}
	header := first.GetHeader()
	if header == nil {
		return status.Error(codes.InvalidArgument, "the first message must be the header")
	}
	chunks := &chunkReader{next: func() ([]byte, error) {
		msg, err := stream.Recv()
		if err != nil {
			return nil, err // io.EOF at the end
		}
		if msg.GetHeader() != nil {
			return nil, status.Error(codes.InvalidArgument, "a second header")
		}
		return msg.GetChunk(), nil
	}}
	already, err := h.svc.importMedia(stream.Context(), importHeader(header), header.GetContentFollows(), chunks)
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			return err
		}
		return toStatus(err)
	}
	return stream.SendAndClose(&mediav1.ImportMediaResponse{AlreadyStored: already})
}

func importHeader(h *mediav1.MediaHeader) store.Media {
	return store.Media{
		MediaID: h.GetMediaId(), Uploader: h.GetUploader(), CreatedTS: h.GetCreatedTs(), UploadedTS: h.GetUploadedTs(),
		ExpiresTS: h.GetUnusedExpiresTs(), ContentType: h.GetContentType(), UploadName: h.GetUploadName(), Size: h.GetSize(),
	}
}

// chunkReader reads the chunks of a stream as one io.Reader.
type chunkReader struct {
	next func() ([]byte, error)
	buf  []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		b, err := c.next()
		if err != nil {
			return 0, err
		}
		c.buf = b
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

var _ io.Reader = (*chunkReader)(nil)
