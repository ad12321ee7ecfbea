-- Nonces of signed ECS API requests (SignatureNonce, x-acs-signature-nonce), remembered for the
-- 15 minutes a signature's timestamp is accepted, so a captured request cannot be replayed.
-- In the database, not in memory, so a replay sent to another replica is refused too.
CREATE TABLE signature_nonces (
    access_key_id TEXT COLLATE "C" NOT NULL,
    nonce         TEXT COLLATE "C" NOT NULL,
    seen_at       BIGINT NOT NULL,
    PRIMARY KEY (access_key_id, nonce)
);
CREATE INDEX signature_nonces_seen_at ON signature_nonces (seen_at);
