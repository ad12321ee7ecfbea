-- Login throttling (src/dispatch/throttle.rs). Kept in the database rather than in memory so a
-- restart does not reset it and, with a shared database, every replica sees the same counts.

-- One row per failed password check. Rows older than the throttle's window (15 minutes) are
-- deleted by the dispatcher's purge loop.
CREATE TABLE login_failures (
    id       INTEGER PRIMARY KEY,
    -- The username as typed, lowercased and cut at 65 characters (names that long cannot
    -- exist, and every one of them shares a row key). Unknown names count like real ones,
    -- so the throttle never tells which accounts exist.
    username TEXT NOT NULL,
    -- The client's address as the trusted-proxy rule resolved it; an IPv6 address is
    -- counted by its /64, which one host usually holds whole.
    source   TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX login_failures_username ON login_failures (username, at);
CREATE INDEX login_failures_source ON login_failures (source, at);

-- Addresses (same form as login_failures.source) a username logged in from successfully:
-- attempts from them are not slowed by other addresses' failures for that username. Rows
-- older than 30 days are deleted by the purge loop.
CREATE TABLE login_sources (
    username TEXT NOT NULL,
    source   TEXT NOT NULL,
    -- The last successful login.
    at       INTEGER NOT NULL,
    PRIMARY KEY (username, source)
);
