-- The agent protocol version of an instance's last connection (1: JSON frames only; 2: binary
-- output frames). NULL until the agent first connects.
ALTER TABLE instances ADD COLUMN agent_protocol INTEGER;
