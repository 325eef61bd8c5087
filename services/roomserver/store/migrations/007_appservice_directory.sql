-- Rooms an application service published in its own directory for one of
-- its third-party networks (PUT /directory/list/appservice/{networkId}/{roomId}).
-- They are listed by /publicRooms only when a client asks for that network
-- (third_party_instance_id) or for every network (include_all_networks);
-- the server's own directory stays room_directory.
CREATE TABLE appservice_room_directory (
    appservice_id TEXT NOT NULL,
    network_id    TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    published_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (appservice_id, network_id, room_id)
);
