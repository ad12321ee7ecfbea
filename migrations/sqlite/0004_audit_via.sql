-- The surface an audited action came through: api, console, agent or server. Entries written
-- before this column existed say ''.
ALTER TABLE audit_log ADD COLUMN via TEXT NOT NULL DEFAULT '';
