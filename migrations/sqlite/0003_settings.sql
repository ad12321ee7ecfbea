-- Server settings an admin changes at run time (e.g. basic_auth = 'off'). One row per key.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
