-- Send File (issue 15): one file uploaded once and sent to many instances, each with a result of
-- its own. migrations/sqlite/0016 has the same meaning.

CREATE TABLE file_sends (
    -- `f-…`, also the transfer id agents see.
    id            TEXT PRIMARY KEY,
    region_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    target_dir    TEXT NOT NULL,
    -- Permission bits, e.g. 420 for 0644.
    mode          BIGINT NOT NULL,
    -- User and group names (or numeric ids) resolved on each agent; NULL keeps the agent's.
    owner         TEXT,
    grp           TEXT,
    overwrite     BOOLEAN NOT NULL,
    timeout_secs  BIGINT NOT NULL,
    size          BIGINT NOT NULL,
    -- Lowercase hex SHA-256 of the upload, which every copy must match.
    sha256        TEXT NOT NULL,
    -- Where the upload sits on the server that received it (under its data directory).
    content_path  TEXT NOT NULL,
    -- When that file was deleted (every result final, or retention); NULL while it exists.
    content_removed_at BIGINT,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    -- Results still Pending then fail (ClientNotRunning or DeliveryTimeout).
    deliver_by    BIGINT NOT NULL,
    -- Results not final then fail with Timeout (created_at + timeout).
    deadline      BIGINT NOT NULL
);
CREATE INDEX file_sends_created ON file_sends (created_at);

CREATE TABLE file_send_results (
    id            BIGSERIAL PRIMARY KEY,
    send_id       TEXT NOT NULL REFERENCES file_sends (id) ON DELETE CASCADE,
    instance_id   TEXT NOT NULL,
    -- Pending, Running, Success, Failed (protocol::files::FileStatus).
    status        TEXT NOT NULL,
    error_code    TEXT,
    error_info    TEXT,
    -- When the file was first offered to the agent (NULL: never connected meanwhile).
    offered_at    BIGINT,
    start_time    BIGINT,
    finish_time   BIGINT,
    -- File bytes sent to the agent over every connection, and the offset the agent held at the
    -- last offer (above 0 after a resumed transfer).
    bytes_sent    BIGINT NOT NULL DEFAULT 0,
    resumed_from  BIGINT NOT NULL DEFAULT 0,
    UNIQUE (send_id, instance_id)
);
CREATE INDEX file_send_results_instance ON file_send_results (instance_id, status);
