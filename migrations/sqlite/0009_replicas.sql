-- Server processes on this database (issue 12). On SQLite there is one, whose row is replaced
-- at each start; on PostgreSQL every replica keeps a row alive with a heartbeat, and a row
-- whose heartbeat expired is reaped by the others (its agents are then offline until they
-- reconnect elsewhere).
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,              -- r-…
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
-- Which replica holds the agent's connection (with `connection`, that replica's own number
-- for it); NULL while offline.
ALTER TABLE instances ADD COLUMN replica TEXT;
