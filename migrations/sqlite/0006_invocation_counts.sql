-- Per-invocation result counts, kept by a trigger on `results` (so no statement that changes a
-- result's status can forget them), and the overall status derived from them by InvocationStatus::RULES
-- (store tests check that this CASE agrees with the Rust rule). Listings filter and count by
-- the indexed status instead of grouping every result of every invocation.

ALTER TABLE invocations ADD COLUMN n_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_invalid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_aborted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_running INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_success INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_error INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_timeout INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_cancelled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_stopping INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN n_terminated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN status TEXT GENERATED ALWAYS AS (CASE
        WHEN n_pending > 0 THEN 'Pending'
        WHEN n_running > 0 THEN 'Running'
        WHEN n_stopping > 0 THEN 'Stopping'
        WHEN n_success > 0 AND (n_invalid + n_aborted + n_failed + n_error + n_timeout) > 0 THEN 'PartialFailed'
        WHEN n_success > 0 THEN 'Success'
        WHEN (n_invalid + n_aborted + n_failed + n_error + n_timeout) > 0 THEN 'Failed'
        WHEN (n_cancelled + n_terminated) > 0 THEN 'Stopped'
        ELSE 'Pending'
    END) VIRTUAL;

UPDATE invocations SET
    n_pending = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Pending'),
    n_invalid = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Invalid'),
    n_aborted = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Aborted'),
    n_running = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Running'),
    n_success = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Success'),
    n_failed = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Failed'),
    n_error = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Error'),
    n_timeout = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Timeout'),
    n_cancelled = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Cancelled'),
    n_stopping = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Stopping'),
    n_terminated = (SELECT COUNT(*) FROM results r WHERE r.invocation_id = invocations.id AND r.status = 'Terminated');

CREATE INDEX invocations_status ON invocations (status, created_at);

-- Results are inserted only by Store::create_invocation, all Pending, with n_pending set to
-- their number; they are deleted only with their invocation (ON DELETE CASCADE). So a status
-- change is all the trigger needs to see.
CREATE TRIGGER results_recounted AFTER UPDATE OF status ON results
WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE invocations SET
        n_pending = n_pending + (NEW.status = 'Pending') - (OLD.status = 'Pending'),
        n_invalid = n_invalid + (NEW.status = 'Invalid') - (OLD.status = 'Invalid'),
        n_aborted = n_aborted + (NEW.status = 'Aborted') - (OLD.status = 'Aborted'),
        n_running = n_running + (NEW.status = 'Running') - (OLD.status = 'Running'),
        n_success = n_success + (NEW.status = 'Success') - (OLD.status = 'Success'),
        n_failed = n_failed + (NEW.status = 'Failed') - (OLD.status = 'Failed'),
        n_error = n_error + (NEW.status = 'Error') - (OLD.status = 'Error'),
        n_timeout = n_timeout + (NEW.status = 'Timeout') - (OLD.status = 'Timeout'),
        n_cancelled = n_cancelled + (NEW.status = 'Cancelled') - (OLD.status = 'Cancelled'),
        n_stopping = n_stopping + (NEW.status = 'Stopping') - (OLD.status = 'Stopping'),
        n_terminated = n_terminated + (NEW.status = 'Terminated') - (OLD.status = 'Terminated')
    WHERE id = NEW.invocation_id;
END;
