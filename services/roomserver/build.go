package roomserver

import (
	"crypto/rand"
	"math/big"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// roomIDAlphabet is what random room ID localparts are made of.
const roomIDAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// newRoomID returns "!<18 random letters>:<server>" for room versions whose
// room IDs are not derived from the create event.
func newRoomID(server spec.ServerName) (string, error) {
	local := make([]byte, 18)
	for i := range local {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(roomIDAlphabet))))
		if err != nil {
			return "", err
		}
		local[i] = roomIDAlphabet[n.Int64()]
	}
	return "!" + string(local) + ":" + string(server), nil
}
