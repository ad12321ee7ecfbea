-- Nothing to change on SQLite; this file keeps the numbering of migrations/postgres, whose 0010
-- rewrites the statement-level trigger that keeps the per-status counts of invocations. SQLite's
-- trigger (0006) runs once per row whose status changed and joins nothing.
SELECT 1;
