-- Execution plans (issue 14): an invocation runs once, on a schedule, or at boots, and each run
-- (an "execution", numbered by `repeats` from 1) has results of its own. migrations/postgres/0015
-- has the same meaning.
--
-- Results become unique per (invocation, instance, execution). SQLite cannot drop the old UNIQUE
-- constraint, so the table is rebuilt the documented way (sqlite.org/lang_altertable.html, "making
-- other kinds of table schema changes"). Store::open_sqlite runs migrations with foreign keys
-- off: with them on, dropping `results` would delete every output chunk.

CREATE TABLE results_new (
    id            INTEGER PRIMARY KEY,
    invocation_id TEXT NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    instance_id   TEXT NOT NULL,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    error_code    TEXT,
    error_info    TEXT,
    -- Pending results become Aborted when not started by then.
    deliver_by    INTEGER NOT NULL,
    -- Running results become Timeout when not finished by then (start + timeout + grace).
    deadline      INTEGER,
    -- Output bookkeeping: chunks stored so far (the next expected sequence number), bytes
    -- received in all, and bytes received but not kept (the middle of a long output).
    next_seq      INTEGER NOT NULL DEFAULT 0,
    output_bytes  INTEGER NOT NULL DEFAULT 0,
    dropped       INTEGER NOT NULL DEFAULT 0,
    start_time    INTEGER,
    finish_time   INTEGER,
    stop_time     INTEGER,
    -- When the task was first handed to its agent's connection (0007).
    sent_at       INTEGER,
    -- Which execution of the invocation on this instance (Alibaba's `Repeats`), from 1. The
    -- agent's task id of execution n is the invoke id, then `<invoke id>-r<n>` from n = 2.
    repeats       INTEGER NOT NULL DEFAULT 1,
    -- A Pending result beyond its invocation's concurrency (0014, rate control).
    held          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (invocation_id, instance_id, repeats)
);
INSERT INTO results_new (id, invocation_id, instance_id, status, exit_code, error_code, error_info, deliver_by,
    deadline, next_seq, output_bytes, dropped, start_time, finish_time, stop_time, sent_at, held)
SELECT id, invocation_id, instance_id, status, exit_code, error_code, error_info, deliver_by,
    deadline, next_seq, output_bytes, dropped, start_time, finish_time, stop_time, sent_at, held FROM results;
DROP TABLE results;
ALTER TABLE results_new RENAME TO results;
CREATE INDEX results_instance ON results (instance_id, status);
CREATE INDEX results_status ON results (status);
-- As in 0014 (rate control), dropped with the old table.
CREATE INDEX results_held ON results (invocation_id, id) WHERE held;

-- As in 0006. Results of later executions are inserted with their invocation's n_pending raised
-- in the same transaction (Store::start_execution), as create_invocation does for the first.
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

-- The plan: Alibaba's RepeatMode (Once, Period, NextRebootOnly, EveryReboot) and Frequency (as
-- given: rate(…), at(…) or cron with a zone).
ALTER TABLE invocations ADD COLUMN repeat_mode TEXT NOT NULL DEFAULT 'Once';
ALTER TABLE invocations ADD COLUMN frequency TEXT;
-- NULL for Once; 'Scheduled' while executions are still to start, 'Stopped' once a user stopped
-- the schedule, 'Ended' once none is left (at(…) ran, every instance ran its next boot).
ALTER TABLE invocations ADD COLUMN schedule_state TEXT;
-- When the next execution of a Period plan is due. A replica starts it by moving this on with
-- `UPDATE … WHERE id = … AND next_run_at = <the value it read>` in the same write transaction
-- that inserts the execution's results: exactly one replica wins each execution.
ALTER TABLE invocations ADD COLUMN next_run_at INTEGER;
-- The highest execution number started (0 for a schedule that has not run yet).
ALTER TABLE invocations ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1;
CREATE INDEX invocations_due ON invocations (next_run_at) WHERE next_run_at IS NOT NULL;

-- The overall status (0006) gains Alibaba's `Scheduled`: nothing waiting or running, and more
-- executions to come. A stopped schedule is `Stopped`, whatever its executions ended as.
DROP INDEX invocations_status;
ALTER TABLE invocations DROP COLUMN status;
ALTER TABLE invocations ADD COLUMN status TEXT GENERATED ALWAYS AS (CASE
        WHEN n_pending > 0 THEN 'Pending'
        WHEN n_running > 0 THEN 'Running'
        WHEN n_stopping > 0 THEN 'Stopping'
        WHEN schedule_state = 'Scheduled' THEN 'Scheduled'
        WHEN schedule_state = 'Stopped' THEN 'Stopped'
        WHEN n_success > 0 AND (n_invalid + n_aborted + n_failed + n_error + n_timeout) > 0 THEN 'PartialFailed'
        WHEN n_success > 0 THEN 'Success'
        WHEN (n_invalid + n_aborted + n_failed + n_error + n_timeout) > 0 THEN 'Failed'
        WHEN (n_cancelled + n_terminated) > 0 THEN 'Stopped'
        ELSE 'Pending'
    END) VIRTUAL;
CREATE INDEX invocations_status ON invocations (status, created_at);

-- The instances a scheduled invocation runs on, as resolved when it was created. For the boot
-- plans, `boot_id` is the boot the instance last ran it for (or was on when the invocation was
-- created): a connection from another boot starts an execution. `runs`: executions started.
CREATE TABLE plan_targets (
    invocation_id TEXT NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    instance_id   TEXT NOT NULL,
    boot_id       TEXT,
    runs          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (invocation_id, instance_id)
);
CREATE INDEX plan_targets_instance ON plan_targets (instance_id);

-- The boot id the agent reported on its last connection (Linux's /proc/sys/kernel/random/boot_id).
ALTER TABLE instances ADD COLUMN boot_id TEXT;
