-- AccessKey pairs for the Alibaba ECS API (issue 13). A client sends the id in clear and signs
-- each request with the secret; the server recomputes the signature, so it must read the
-- secret back: it is stored sealed (ChaCha20-Poly1305 under the server's secret key file,
-- src/dispatch/sealing.rs), never in plaintext. At most two per account (the domain's rule,
-- checked inside the write transaction that inserts).
CREATE TABLE access_keys (
    id            TEXT PRIMARY KEY,        -- LTAI + 20 letters and digits
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    description   TEXT NOT NULL DEFAULT '',
    -- nonce (12 bytes) || ciphertext || tag (16 bytes); sealed with the id as associated data,
    -- so it opens in this row only.
    sealed_secret BLOB NOT NULL,
    -- 0 while disabled: requests it signs are refused, and it can be enabled again.
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL,
    -- The last request it signed that verified, to the minute.
    last_used_at  INTEGER
);
CREATE INDEX access_keys_user ON access_keys (user_id);
