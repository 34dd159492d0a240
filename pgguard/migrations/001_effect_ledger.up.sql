-- pgguard ledger, version 1.
--
-- Written for the default names (table effect_ledger in the search_path).
-- Copy it as is into goose or golang-migrate, or let pgguard.Migrate apply
-- it: Migrate renders every name below for the configured schema and table.
-- Every statement is idempotent (IF NOT EXISTS), so applying it over a
-- ledger that already exists changes nothing.

-- Fencing tokens: one value per claim ever handed out (first claims and
-- takeovers alike), so a token from an earlier claim never matches a later
-- one.
CREATE SEQUENCE IF NOT EXISTS effect_ledger_token_seq AS bigint;

CREATE TABLE IF NOT EXISTS effect_ledger (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key              text        NOT NULL,
    namespace        text        NOT NULL,
    status           text        NOT NULL,
    -- SHA-256 of the payload; NULL when the effect has none.
    fingerprint      bytea,
    -- The encoded result (applied, skipped; kept when revoked).
    result           bytea,
    token            bigint      NOT NULL,
    attempts         integer     NOT NULL DEFAULT 1,
    -- NULL when no claim is held (released, parked or finished).
    lease_until      timestamptz,
    parked           boolean     NOT NULL DEFAULT false,
    -- The holder recorded the start of its provider call (MarkCalling).
    call_started     boolean     NOT NULL DEFAULT false,
    reason           text,
    first_claimed_at timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CONSTRAINT effect_ledger_status_check
        CHECK (status IN ('pending', 'applied', 'skipped', 'failed', 'revoked')),
    -- An applied record always carries its result.
    CONSTRAINT effect_ledger_result_check
        CHECK (status <> 'applied' OR result IS NOT NULL)
);

-- At most one active record per key; failed and revoked records are exempt.
-- The claim's ON CONFLICT clause repeats this predicate word for word.
CREATE UNIQUE INDEX IF NOT EXISTS effect_ledger_active_key
    ON effect_ledger (key)
    WHERE status IN ('pending', 'applied', 'skipped');

-- ListStuck: pending records that are parked or leased, oldest first.
-- Released claims (no lease, not parked) are left out on purpose: with them
-- in, the planner may pick this index for the fenced updates
-- (key = $1 AND token = $2 AND status = 'pending') and filter every released
-- row by key instead of using the active-key index.
CREATE INDEX IF NOT EXISTS effect_ledger_stuck
    ON effect_ledger (first_claimed_at)
    WHERE status = 'pending' AND (parked OR lease_until IS NOT NULL);
