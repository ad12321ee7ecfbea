-- When a result's task was first handed to its agent's connection. A pending result past its
-- delivery window was then either never sent (the agent was away: `ClientNotRunning`) or sent
-- and never acknowledged (`ClientNotResponse`); the two are told apart, and the second waits a
-- little longer, since the agent refuses a task read after its deadline.
ALTER TABLE results ADD COLUMN sent_at INTEGER;
