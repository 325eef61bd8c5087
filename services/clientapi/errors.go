package clientapi

import (
	"github.com/myelin-chat/myelin/services/clientapi/internal/keys"
)

// ErrKeysNotHandedOver is what Ready reports until the old key tables are
// handed over to the key-server.
var ErrKeysNotHandedOver = keys.ErrKeysNotHandedOver
