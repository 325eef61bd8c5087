-- Where the client-API's consumers of JetStream streams are: the stream
-- sequence of the last message whose effects committed, written in the
-- same transaction as those effects. The room events consumer resumes
-- right after it (an ordered consumer from that sequence), so after a
-- crash it neither waits for redelivery nor receives newer events first.
CREATE TABLE stream_marks (
    name TEXT PRIMARY KEY,
    seq  BIGINT NOT NULL
);
