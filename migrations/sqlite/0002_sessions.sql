-- Console login sessions. The cookie holds a random secret; only its SHA-256 is stored.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Sent back by every state-changing console request (X-CSRF-Token header).
    csrf       TEXT NOT NULL,
    -- The region chosen in the top bar; NULL until one is picked.
    region_id  TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
