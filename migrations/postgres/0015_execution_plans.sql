-- Execution plans (issue 14); the meaning is migrations/sqlite/0015's, whose comments say more.

-- Which execution of the invocation on this instance (Alibaba's `Repeats`), from 1.
ALTER TABLE results ADD COLUMN repeats BIGINT NOT NULL DEFAULT 1;
ALTER TABLE results DROP CONSTRAINT results_invocation_id_instance_id_key;
ALTER TABLE results ADD CONSTRAINT results_execution UNIQUE (invocation_id, instance_id, repeats);

ALTER TABLE invocations ADD COLUMN repeat_mode TEXT COLLATE "C" NOT NULL DEFAULT 'Once';
ALTER TABLE invocations ADD COLUMN frequency TEXT COLLATE "C";
-- NULL for Once; Scheduled, Stopped or Ended.
ALTER TABLE invocations ADD COLUMN schedule_state TEXT COLLATE "C";
-- When the next execution of a Period plan is due; moved on by the replica that starts it.
ALTER TABLE invocations ADD COLUMN next_run_at BIGINT;
-- The highest execution number started.
ALTER TABLE invocations ADD COLUMN repeats BIGINT NOT NULL DEFAULT 1;
CREATE INDEX invocations_due ON invocations (next_run_at) WHERE next_run_at IS NOT NULL;

-- The overall status gains Scheduled (dropping the column drops its index).
ALTER TABLE invocations DROP COLUMN status;
ALTER TABLE invocations ADD COLUMN status TEXT COLLATE "C" GENERATED ALWAYS AS (CASE
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
    END) STORED;
CREATE INDEX invocations_status ON invocations (status, created_at);

CREATE TABLE plan_targets (
    invocation_id TEXT COLLATE "C" NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    instance_id   TEXT COLLATE "C" NOT NULL,
    boot_id       TEXT COLLATE "C",
    runs          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (invocation_id, instance_id)
);
CREATE INDEX plan_targets_instance ON plan_targets (instance_id);

ALTER TABLE instances ADD COLUMN boot_id TEXT COLLATE "C";
