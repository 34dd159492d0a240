-- Reverts 002_record_states.up.sql: back to version 1's status, parked and
-- call_started. A claimed record becomes a pending record under its lease; a
-- reconciling one a pending, parked one; released and unknown ones released;
-- in_doubt ones parked. The provider deadline, due times, generations and
-- evidence are dropped.
ALTER TABLE effect_ledger
    ADD COLUMN status       text,
    ADD COLUMN parked       boolean NOT NULL DEFAULT false,
    ADD COLUMN call_started boolean NOT NULL DEFAULT false;

UPDATE effect_ledger SET
    status = CASE WHEN state IN ('applied', 'skipped', 'failed', 'revoked') THEN state ELSE 'pending' END,
    parked = state IN ('in_doubt', 'reconciling'),
    call_started = state IN ('calling', 'reconciling', 'in_doubt'),
    lease_until = CASE WHEN state IN ('claimed', 'calling') THEN lease_until END;

-- Dropping state drops what depends on it: the version-2 indexes and the
-- state and result checks.
ALTER TABLE effect_ledger
    ALTER COLUMN status SET NOT NULL,
    DROP COLUMN state,
    DROP COLUMN prev_state,
    DROP COLUMN generation,
    DROP COLUMN due_at,
    DROP COLUMN dedup_until,
    DROP COLUMN evidence,
    ADD CONSTRAINT effect_ledger_status_check
        CHECK (status IN ('pending', 'applied', 'skipped', 'failed', 'revoked')),
    ADD CONSTRAINT effect_ledger_result_check
        CHECK (status <> 'applied' OR result IS NOT NULL);

ALTER TABLE effect_ledger RENAME COLUMN claims TO attempts;

CREATE UNIQUE INDEX effect_ledger_active_key
    ON effect_ledger (key)
    WHERE status IN ('pending', 'applied', 'skipped');

CREATE INDEX effect_ledger_stuck
    ON effect_ledger (first_claimed_at)
    WHERE status = 'pending' AND (parked OR lease_until IS NOT NULL);
