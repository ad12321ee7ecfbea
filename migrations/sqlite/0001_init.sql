-- fleetrun schema, SQLite dialect. migrations/postgres/ must keep the same numbering and meaning.
-- Times are INTEGER milliseconds since the Unix epoch (UTC), the one format both backends share.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    -- argon2id PHC string; the password itself is never stored.
    password_hash TEXT NOT NULL,
    -- admin | operator | viewer
    role          TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,             -- tok-…
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    -- SHA-256 of the whole secret token; tokens are 256-bit random, so a fast hash is enough.
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at   INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE activations (
    id                   TEXT PRIMARY KEY,     -- act-…
    code_hash            TEXT NOT NULL,        -- SHA-256 of the activation code
    region_id            TEXT NOT NULL,
    description          TEXT NOT NULL DEFAULT '',
    instance_count_limit INTEGER NOT NULL,
    registered_count     INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    disabled             INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE instances (
    id                      TEXT PRIMARY KEY,  -- i-…
    name                    TEXT NOT NULL,
    hostname                TEXT NOT NULL,
    region_id               TEXT NOT NULL,
    os_type                 TEXT NOT NULL,     -- linux | windows
    os_name                 TEXT NOT NULL,
    ip_addresses            TEXT NOT NULL,     -- JSON array of strings
    tags                    TEXT NOT NULL DEFAULT '{}', -- JSON object
    agent_version           TEXT NOT NULL,
    supported_command_types TEXT NOT NULL,     -- JSON array, as last reported in Hello
    secret_hash             TEXT NOT NULL,     -- SHA-256 of the per-instance secret
    activation_id           TEXT NOT NULL,
    registered_at           INTEGER NOT NULL,
    -- Written in batches by the server, not on every heartbeat; lags by at most one interval.
    last_heartbeat_at       INTEGER,
    -- 1 while the agent holds a connection to the server.
    online                  INTEGER NOT NULL DEFAULT 0,
    -- Which connection set `online`: a closing connection clears it only if it is still its own,
    -- so a quick reconnect is never recorded offline by the old connection's late cleanup.
    connection              INTEGER
);
CREATE INDEX instances_region ON instances (region_id, id);

CREATE TABLE commands (
    id              TEXT PRIMARY KEY,          -- c-…
    region_id       TEXT NOT NULL,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    type            TEXT NOT NULL,
    content         TEXT NOT NULL,             -- decoded, with {{parameters}} unfilled
    working_dir     TEXT,
    timeout_secs    INTEGER NOT NULL,
    username        TEXT,
    enable_parameter INTEGER NOT NULL DEFAULT 0,
    parameter_names TEXT NOT NULL DEFAULT '[]', -- JSON array, found in content at save time
    creator         TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX commands_region ON commands (region_id, created_at);

CREATE TABLE invocations (
    id              TEXT PRIMARY KEY,          -- t-…
    -- The retained command this ran, if any. Not a foreign key: records outlive deleted commands.
    command_id      TEXT,
    name            TEXT NOT NULL,
    type            TEXT NOT NULL,
    content         TEXT NOT NULL,             -- as submitted, {{parameters}} unfilled
    working_dir     TEXT,
    timeout_secs    INTEGER NOT NULL,
    username        TEXT,
    enable_parameter INTEGER NOT NULL DEFAULT 0,
    parameters      TEXT NOT NULL DEFAULT '{}', -- JSON object
    creator         TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX invocations_created ON invocations (created_at);
CREATE INDEX invocations_command ON invocations (command_id);

-- One row per (invocation, instance). Its status only moves forward to a terminal one.
CREATE TABLE results (
    id            INTEGER PRIMARY KEY,
    invocation_id TEXT NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    instance_id   TEXT NOT NULL,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    error_code    TEXT,
    error_info    TEXT,
    -- Pending results become Aborted when not started by then.
    deliver_by    INTEGER NOT NULL,
    -- Running results become Timeout when not finished by then (start + timeout + grace).
    deadline      INTEGER,
    -- Output bookkeeping: chunks stored so far (the next expected sequence number), bytes
    -- received in all, and bytes received but not kept (the middle of a long output).
    next_seq      INTEGER NOT NULL DEFAULT 0,
    output_bytes  INTEGER NOT NULL DEFAULT 0,
    dropped       INTEGER NOT NULL DEFAULT 0,
    start_time    INTEGER,
    finish_time   INTEGER,
    stop_time     INTEGER,
    UNIQUE (invocation_id, instance_id)
);
CREATE INDEX results_instance ON results (instance_id, status);
CREATE INDEX results_status ON results (status);

-- Kept output. A row covers bytes [pos, pos + length(data)) of one result's output; the kept
-- rows are the head (pos < head limit) and the tail (the last tail-limit bytes). Rows are never
-- empty. (`pos`, not `offset`, which PostgreSQL reserves.)
CREATE TABLE output_chunks (
    result_id INTEGER NOT NULL REFERENCES results (id) ON DELETE CASCADE,
    pos       INTEGER NOT NULL,
    stream    INTEGER NOT NULL,                -- 0 stdout, 1 stderr
    data      BLOB NOT NULL,
    PRIMARY KEY (result_id, pos)
) WITHOUT ROWID;

-- Append-only: the product has no statement that updates or deletes rows here.
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    username  TEXT NOT NULL,
    source_ip TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_at ON audit_log (at);
