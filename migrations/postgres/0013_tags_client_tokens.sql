-- Issue 14: tags on instances, commands aimed at tags, idempotent submission.

-- An instance's tags, one row per key: what tag filters and tag targeting search. The JSON
-- copy in `instances.tags` is what rows show; the store writes both in one transaction
-- (`Store::set_instance_tags`, enrolment), so they never differ. At most 20 per instance
-- (the domain's rule).
CREATE TABLE instance_tags (
    instance_id TEXT COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key         TEXT COLLATE "C" NOT NULL,
    value       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (instance_id, key)
);
CREATE INDEX instance_tags_key ON instance_tags (key, value);
INSERT INTO instance_tags (instance_id, key, value)
    SELECT instances.id, t.key, t.value FROM instances, jsonb_each_text(instances.tags) t;

-- The tag selector a command targeted, as asked (array of {key, value}; '[]' when it named
-- instances only), and the region it was resolved in. The resolved set is the invocation's
-- results.
ALTER TABLE invocations ADD COLUMN target_tags JSONB NOT NULL DEFAULT '[]';
ALTER TABLE invocations ADD COLUMN target_region TEXT COLLATE "C";
-- The invocation's own tags (the ECS API's `Tag.N` on RunCommand/InvokeCommand), array of
-- {key, value}; they select nothing.
ALTER TABLE invocations ADD COLUMN invocation_tags JSONB NOT NULL DEFAULT '[]';

-- RunCommand/InvokeCommand `client_token`s: one row per (account, token), naming the first
-- invocation made with it. The primary key is what makes two concurrent submissions of one
-- token make one invocation; a row older than a day is deleted before its token is used again.
-- `request_hash` (SHA-256 of the request) tells a retry from another request reusing the token.
CREATE TABLE client_tokens (
    user_id       BIGINT NOT NULL,
    token         TEXT COLLATE "C" NOT NULL,
    invocation_id TEXT COLLATE "C" NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    request_hash  TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (user_id, token)
);
CREATE INDEX client_tokens_invocation ON client_tokens (invocation_id);
