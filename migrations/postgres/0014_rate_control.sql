-- Rate control (issue 14, AWS Run Command's MaxConcurrency and MaxErrors): how many of an
-- invocation's instances run at once, and how many may fail before the rest are not started.

-- As given ("5" or "10%"), for the records; NULL when not given (all at once, no error limit).
ALTER TABLE invocations ADD COLUMN max_concurrency TEXT;
ALTER TABLE invocations ADD COLUMN max_errors TEXT;
-- The same, resolved against the invocation's instance count when it was created (a
-- percentage rounded up; concurrency at least 1). What the release of held results obeys.
ALTER TABLE invocations ADD COLUMN concurrency_limit BIGINT;
ALTER TABLE invocations ADD COLUMN error_limit BIGINT;
-- Results still waiting their turn (`results.held`), kept by the statements that hold,
-- release or cancel them (not by the status trigger: being held is not a status).
ALTER TABLE invocations ADD COLUMN n_held BIGINT NOT NULL DEFAULT 0;
-- A Pending result beyond the concurrency: not delivered, and out of the delivery-window
-- sweep, until a slot frees and it is released (it then gets its own delivery window).
-- Only ever true while the result is Pending.
ALTER TABLE results ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX results_held ON results (invocation_id, id) WHERE held;
-- The safety net's look for invocations with results waiting (a release lost with a replica).
CREATE INDEX invocations_held ON invocations (id) WHERE n_held > 0;
