package store

import (
	"github.com/jackc/pgx/v5"
)

// PushContext is what push rule evaluation reads about an event's room, as
// of the event.
type PushContext struct {
	// Members are the room's joined users.
	Members []string
	// RulesPos is the account data position of each member's (and the
	// extra user's) stored rules; a user without any has none (0).
	RulesPos map[string]int64
	// Create and PowerLevels are the room's create and power levels
	// events in client format (nil when absent).
	Create, PowerLevels []byte
}

// PushRulesType is the account data type of push rules.
const PushRulesType = "m.push_rules"

// queuePushContext queues the reads of pc: the room's joined members, the
// positions of their (and extraUser's, when not empty) stored push rules,
// and the room's create and power levels events.
func queuePushContext(b *pgx.Batch, roomID, extraUser string, pc *PushContext) {
	pc.RulesPos = map[string]int64{}
	b.Queue(`SELECT u.user_id, u.joined, ad.pos
		FROM (SELECT state_key AS user_id, true AS joined FROM current_state
				WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'
			UNION ALL SELECT $2::text, false WHERE $2::text <> '') u
		LEFT JOIN account_data ad ON ad.user_id = u.user_id AND ad.room_id = '' AND ad.type = $3`,
		roomID, extraUser, PushRulesType).Query(func(rows pgx.Rows) error {
		var user string
		var joined bool
		var pos *int64
		_, err := pgx.ForEachRow(rows, []any{&user, &joined, &pos}, func() error {
			if joined {
				pc.Members = append(pc.Members, user)
			}
			if pos != nil {
				pc.RulesPos[user] = *pos
			}
			return nil
		})
		return err
	})
	b.Queue(`SELECT type, event FROM current_state
		WHERE room_id = $1 AND type IN ('m.room.create', 'm.room.power_levels') AND state_key = ''`,
		roomID).Query(func(rows pgx.Rows) error {
		var typ string
		var ev []byte
		_, err := pgx.ForEachRow(rows, []any{&typ, &ev}, func() error {
			if typ == "m.room.create" {
				pc.Create = ev
			} else {
				pc.PowerLevels = ev
			}
			return nil
		})
		return err
	})
}
