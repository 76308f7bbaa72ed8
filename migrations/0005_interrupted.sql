-- A sync whose reconciler died mid-way (killed, or lost its database connection) is recorded
-- as `interrupted` by the next leader, at once, instead of showing `applying` until a new sync.

ALTER TABLE sources DROP CONSTRAINT sources_state_check;
ALTER TABLE sources ADD CONSTRAINT sources_state_check
    CHECK (state IN ('pending', 'synced', 'out-of-sync', 'applying', 'failed', 'interrupted'));
ALTER TABLE sync_attempts DROP CONSTRAINT sync_attempts_outcome_check;
ALTER TABLE sync_attempts ADD CONSTRAINT sync_attempts_outcome_check
    CHECK (outcome IN ('synced', 'out-of-sync', 'failed', 'interrupted'));
