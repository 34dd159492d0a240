-- pgguard ledger, version 2: one named state per record.
--
-- Version 1 spread a pending record's state over status, parked,
-- call_started and a NULL lease_until. Version 2 stores it in one column,
-- state, next to what later rules need: the provider's dedup deadline
-- (stored at the claim that starts a provider key), a due time for released
-- records, the provider-key generation, and the evidence of the last
-- attempts. Every version-1 row keeps its meaning:
--
--   status = applied, skipped, failed, revoked   -> the same state
--   pending and parked                           -> in_doubt (reconcile or settle)
--   pending, released (no lease, not parked)     -> unknown: retried under the
--       same key while the provider remembers it, in doubt past that (version 1
--       did not record whether a released attempt had acted)
--   pending under a lease, call started or not   -> calling: version 1 did not
--       record call starts for every policy, so a holder that dies is treated
--       as one whose call may have started (never a second call)
--
-- Records written by version 1 have no stored deadline: the claim falls back
-- to first_claimed_at plus the effect's window, as version 1 did.

-- The whole upgrade runs only over a version-1 ledger (one with a status
-- column), so applying this file to a ledger it already upgraded (a team that
-- ran the plain files with its own tool, then switched to Migrate) changes
-- nothing.
DO $$
DECLARE
    version1 boolean := true;
BEGIN
    BEGIN
        PERFORM status FROM effect_ledger LIMIT 0;
    EXCEPTION WHEN undefined_column THEN
        version1 := false;
    END;
    IF version1 THEN
        ALTER TABLE effect_ledger
            ADD COLUMN state       text,
            ADD COLUMN prev_state  text,
            ADD COLUMN generation  integer     NOT NULL DEFAULT 1,
            ADD COLUMN due_at      timestamptz,
            ADD COLUMN dedup_until timestamptz,
            -- The last attempts (at most 10), oldest first: class, status, request id,
            -- replay, time, error.
            ADD COLUMN evidence    jsonb       NOT NULL DEFAULT '[]';

        ALTER TABLE effect_ledger RENAME COLUMN attempts TO claims;

        UPDATE effect_ledger SET state = CASE
            WHEN status <> 'pending' THEN status
            WHEN parked THEN 'in_doubt'
            WHEN lease_until IS NULL THEN 'unknown'
            ELSE 'calling'
        END;

        ALTER TABLE effect_ledger ALTER COLUMN state SET NOT NULL;

        -- Dropping the version-1 columns drops what depends on them: the old active
        -- key and stuck indexes and the status and result checks.
        ALTER TABLE effect_ledger
            DROP COLUMN status,
            DROP COLUMN parked,
            DROP COLUMN call_started;

        ALTER TABLE effect_ledger
            ADD CONSTRAINT effect_ledger_state_check CHECK (state IN
                ('claimed', 'calling', 'reconciling', 'released', 'unknown', 'in_doubt',
                 'applied', 'skipped', 'failed', 'revoked')),
            -- An applied record always carries its result (an empty one at least).
            ADD CONSTRAINT effect_ledger_result_check CHECK (state <> 'applied' OR result IS NOT NULL);

        -- At most one active record per key; failed and revoked records are exempt.
        -- The claim's ON CONFLICT clause repeats this predicate word for word.
        CREATE UNIQUE INDEX effect_ledger_active_key
            ON effect_ledger (key)
            WHERE state NOT IN ('failed', 'revoked');

        -- ListStuck: records that may be stuck, oldest first claim first. Released
        -- records (free) and finished ones are left out, so the index stays small.
        CREATE INDEX effect_ledger_stuck
            ON effect_ledger (first_claimed_at)
            WHERE state IN ('claimed', 'calling', 'reconciling', 'unknown', 'in_doubt');

        -- History and the failed records of a key (exempt rows, many per key).
        CREATE INDEX effect_ledger_exempt
            ON effect_ledger (key, updated_at)
            WHERE state IN ('failed', 'revoked');

        -- Prune: finished records of a namespace by age.
        CREATE INDEX effect_ledger_finished
            ON effect_ledger (namespace, updated_at)
            WHERE state IN ('applied', 'skipped', 'failed', 'revoked');
    END IF;
END
$$;
