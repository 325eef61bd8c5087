package accounts

import (
	"context"
)

// SetProfileField sets displayname or avatar_url (field must be one of
// them; nil clears it). ErrNotFound when the account does not exist or is
// deactivated.
func (s *Store) SetProfileField(ctx context.Context, localpart, field string, value *string) error {
	var q string
	switch field {
	case "displayname":
		q = `UPDATE accounts SET displayname = $2 WHERE localpart = $1 AND NOT deactivated`
	case "avatar_url":
		q = `UPDATE accounts SET avatar_url = $2 WHERE localpart = $1 AND NOT deactivated`
	default:
		return ErrNotFound
	}
	tag, err := s.db.Exec(ctx, q, localpart, value)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return err
}

// DirectoryUser is one result of a user directory search.
type DirectoryUser struct {
	UserID      string  `json:"user_id"`
	DisplayName *string `json:"display_name,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// SearchUsers finds local, active users whose user ID or display name
// contains term (case-insensitive) and who either share a joined room with
// searcher or are joined to a room whose join rule is public. It returns
// up to limit+1 rows so the caller can tell whether results were limited.
func (s *Store) SearchUsers(ctx context.Context, searcher, serverName, term string, limit int) ([]DirectoryUser, error) {
	rows, err := s.db.Query(ctx, `
		WITH visible AS (
			SELECT m.user_id FROM memberships m
			WHERE m.membership = 'join' AND m.room_id IN (
				SELECT room_id FROM memberships WHERE user_id = $1 AND membership = 'join'
				UNION
				SELECT room_id FROM current_state WHERE type = 'm.room.join_rules' AND state_key = ''
					AND convert_from(event, 'UTF8')::jsonb -> 'content' ->> 'join_rule' = 'public'
			)
		)
		SELECT '@' || a.localpart || ':' || $2, a.displayname, a.avatar_url
		FROM accounts a
		WHERE NOT a.deactivated AND NOT a.is_guest
		  AND '@' || a.localpart || ':' || $2 IN (SELECT user_id FROM visible)
		  AND (position(lower($3) IN a.localpart) > 0 OR position(lower($3) IN lower(coalesce(a.displayname, ''))) > 0)
		ORDER BY a.displayname NULLS LAST, a.localpart
		LIMIT $4`, searcher, serverName, term, limit+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []DirectoryUser{}
	for rows.Next() {
		var u DirectoryUser
		if err := rows.Scan(&u.UserID, &u.DisplayName, &u.AvatarURL); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}
