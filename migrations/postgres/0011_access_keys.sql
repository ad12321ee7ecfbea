-- AccessKey pairs for the Alibaba ECS API (issue 13). A client sends the id in clear and signs
-- each request with the secret; the server recomputes the signature, so it must read the
-- secret back: it is stored sealed (ChaCha20-Poly1305 under the server's secret key file,
-- src/dispatch/sealing.rs), never in plaintext. At most two per account (the domain's rule,
-- checked inside the write transaction that inserts). Every replica needs the same key file.
CREATE TABLE access_keys (
    id            TEXT COLLATE "C" PRIMARY KEY, -- LTAI + 20 letters and digits
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    description   TEXT COLLATE "C" NOT NULL DEFAULT '',
    -- nonce (12 bytes) || ciphertext || tag (16 bytes); sealed with the id as associated data,
    -- so it opens in this row only.
    sealed_secret BYTEA NOT NULL,
    -- FALSE while disabled: requests it signs are refused, and it can be enabled again.
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    BIGINT NOT NULL,
    -- The last request it signed that verified, to the minute.
    last_used_at  BIGINT
);
CREATE INDEX access_keys_user ON access_keys (user_id);
