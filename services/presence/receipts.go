package presence

import (
	"context"
	"fmt"
	"strings"

	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/presence/store"
)

// Receipt types. m.fully_read is a read marker, not a receipt; it is kept
// here with the receipts because the client-API has no room account data
// yet (the client sees it as room account data in /sync).
const (
	ReceiptRead        = "m.read"
	ReceiptReadPrivate = "m.read.private"
	FullyRead          = "m.fully_read"
)

// private says whether only the owner may see a receipt of this type.
func private(receiptType string) bool {
	return receiptType == ReceiptReadPrivate || receiptType == FullyRead
}

// setReceipt stores a receipt and publishes it.
func (s *Service) setReceipt(ctx context.Context, r store.Receipt) (int64, error) {
	switch r.Type {
	case ReceiptRead, ReceiptReadPrivate, FullyRead:
	default:
		return 0, fmt.Errorf("%w: unknown receipt type %q", ErrBadRequest, r.Type)
	}
	if !strings.HasPrefix(r.EventID, "$") {
		return 0, fmt.Errorf("%w: bad event ID %q", ErrBadRequest, r.EventID)
	}
	if r.Type == FullyRead && r.ThreadID != "" {
		return 0, fmt.Errorf("%w: m.fully_read has no thread", ErrBadRequest)
	}
	if r.TS == 0 {
		r.TS = s.clock.Now().UnixMilli()
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	pos, err := s.store.PutReceipt(ctx, r)
	if err != nil {
		return 0, err
	}
	s.pos.Store(pos)
	s.publish(ctx, bus.ReceiptsSubject(r.RoomID), &presencev1.ReceiptUpdate{
		RoomId:   r.RoomID,
		Receipt:  receiptProto(r),
		Position: pos,
		Private:  private(r.Type),
	})
	return pos, nil
}

func receiptProto(r store.Receipt) *presencev1.Receipt {
	return &presencev1.Receipt{UserId: r.UserID, ReceiptType: r.Type, EventId: r.EventID, ThreadId: r.ThreadID, Ts: r.TS}
}
