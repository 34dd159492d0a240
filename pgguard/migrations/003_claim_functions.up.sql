-- pgguard ledger, version 3: the claim rule and the claim as functions, so
-- that a repeat of a finished key costs one index lookup.
--
-- The table does not change. effect_ledger_decide is idempotency.Decide in
-- SQL, written once: the claim below and the store's batch claim
-- (ClaimMany) both call it, and PostgreSQL inlines it into their plans.
-- effect_ledger_claim is the claim-or-fetch statement of version 2 (an
-- INSERT ... ON CONFLICT in a CTE) as a function. Store.Claim's statement
-- looks the key up and decides first, and calls it only for a key the
-- request may acquire: a repeat of a finished key, or of a key held under a
-- live lease, is a plain index lookup that writes and locks nothing (the
-- CTE's mere presence cost a repeat about 1.7 times a lookup). Both functions are CREATE OR REPLACE: applying this file again
-- changes nothing.

-- Decide's verdict for an active record (its state, fingerprint, lease, due
-- time, provider deadline and first claim) and a request (fingerprint,
-- lease and window in microseconds, takeover, reconcile) at now:
-- 'mismatch', 'done', 'in_flight', 'acquired', 'not_due', 'in_doubt' or
-- 'reconcile'. storetest's verdict table checks it against Decide.
CREATE OR REPLACE FUNCTION effect_ledger_decide(
    state text, fingerprint bytea, lease_until timestamptz, due_at timestamptz,
    dedup_until timestamptz, first_claimed_at timestamptz,
    req_fingerprint bytea, req_lease bigint, req_takeover boolean, req_window bigint,
    req_reconcile boolean, now timestamptz)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT CASE
    WHEN fingerprint IS DISTINCT FROM req_fingerprint THEN 'mismatch'
    WHEN state IN ('applied', 'skipped') THEN 'done'
    WHEN state IN ('claimed', 'calling', 'reconciling') AND now < lease_until THEN 'in_flight'
    WHEN state = 'claimed' THEN 'acquired'
    WHEN state = 'released' AND now < due_at THEN 'not_due'
    WHEN state = 'released' THEN 'acquired'
    WHEN state = 'unknown' AND now < due_at THEN 'not_due'
    -- Takeover under the same provider key while a whole run fits before
    -- the provider's deadline (DedupDeadline: the stored one, or for a
    -- version-1 record its first claim plus the request's window).
    WHEN state IN ('calling', 'unknown') AND req_takeover
        AND ((CASE WHEN dedup_until IS NOT NULL OR req_window <= 0 THEN dedup_until
                   ELSE first_claimed_at + req_window * interval '1 microsecond' END) IS NULL
             OR now + req_lease * interval '1 microsecond'
                <= (CASE WHEN dedup_until IS NOT NULL OR req_window <= 0 THEN dedup_until
                         ELSE first_claimed_at + req_window * interval '1 microsecond' END)) THEN 'acquired'
    WHEN NOT req_reconcile THEN 'in_doubt'
    WHEN now < due_at OR now < lease_until THEN 'not_due'
    ELSE 'reconcile'
END
$$;

-- What effect_ledger_claim returns: a record, its verdict, and whether it
-- is stale (its row changed after the statement's snapshot).
DO $$
BEGIN
    CREATE TYPE effect_ledger_claimed AS (key text, namespace text, state text, prev_state text,
        fingerprint bytea, result bytea, token bigint, claims integer, generation integer,
        lease_until timestamptz, due_at timestamptz, dedup_until timestamptz, evidence jsonb, reason text,
        first_claimed_at timestamptz, updated_at timestamptz, verdict text, stale boolean);
EXCEPTION WHEN duplicate_object THEN
    NULL; -- applied before: the type is there
END
$$;

-- The claim-or-fetch statement of version 2 for one request, for a key
-- that has no active record or one the request may acquire: Store.Claim's
-- statement looks the key up itself and calls this function only then, so
-- a repeat of a finished key is one index lookup that writes and locks
-- nothing. p_now NULL means clock_timestamp(), read once. It returns the
-- inserted or taken-over record, or the one that was there with its
-- verdict; NULL, or a stale record, when the key's row changed after the
-- statement's snapshot (the store runs its statement again). p_token_seq is
-- the ledger's token sequence, given by the store so that this file names
-- it only once.
CREATE OR REPLACE FUNCTION effect_ledger_claim(
    p_key text, p_namespace text, p_fingerprint bytea, p_lease bigint, p_takeover boolean,
    p_window bigint, p_now timestamptz, p_track boolean, p_reconcile boolean, p_token_seq regclass)
RETURNS effect_ledger_claimed
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v effect_ledger_claimed;
BEGIN
    WITH cur AS (
        SELECT l.key, l.namespace, l.state, l.prev_state, l.fingerprint, l.result, l.token, l.claims,
            l.generation, l.lease_until, l.due_at, l.dedup_until, l.evidence, l.reason, l.first_claimed_at,
            l.updated_at,
            effect_ledger_decide(l.state, l.fingerprint, l.lease_until, l.due_at, l.dedup_until,
                l.first_claimed_at, p_fingerprint, p_lease, p_takeover, p_window, p_reconcile, v_now) AS verdict
        FROM effect_ledger AS l
        WHERE l.key = p_key AND l.state NOT IN ('failed', 'revoked')
    ), ins AS (
        INSERT INTO effect_ledger AS l (key, namespace, state, fingerprint, token, claims, generation,
            lease_until, dedup_until, first_claimed_at, updated_at)
        SELECT p_key, p_namespace, CASE WHEN p_track THEN 'claimed' ELSE 'calling' END, p_fingerprint,
            nextval(p_token_seq), 1, 1, v_now + p_lease * interval '1 microsecond',
            CASE WHEN p_window > 0 THEN v_now + p_window * interval '1 microsecond' END, v_now, v_now
        WHERE NOT EXISTS (SELECT FROM cur WHERE cur.verdict NOT IN ('acquired', 'reconcile'))
        ON CONFLICT (key) WHERE state NOT IN ('failed', 'revoked')
        DO UPDATE SET
            prev_state = l.state,
            state = CASE
                WHEN effect_ledger_decide(l.state, l.fingerprint, l.lease_until, l.due_at, l.dedup_until,
                    l.first_claimed_at, p_fingerprint, p_lease, p_takeover, p_window, p_reconcile,
                    EXCLUDED.updated_at) = 'reconcile' THEN 'reconciling'
                WHEN l.state IN ('calling', 'unknown') THEN 'calling'
                ELSE EXCLUDED.state END,
            token = EXCLUDED.token, claims = l.claims + 1, lease_until = EXCLUDED.lease_until, due_at = NULL,
            dedup_until = CASE WHEN l.state IN ('claimed', 'released') THEN EXCLUDED.dedup_until
                WHEN l.dedup_until IS NOT NULL OR p_window <= 0 THEN l.dedup_until
                ELSE l.first_claimed_at + p_window * interval '1 microsecond' END,
            updated_at = EXCLUDED.updated_at
        WHERE effect_ledger_decide(l.state, l.fingerprint, l.lease_until, l.due_at, l.dedup_until,
            l.first_claimed_at, p_fingerprint, p_lease, p_takeover, p_window, p_reconcile,
            EXCLUDED.updated_at) IN ('acquired', 'reconcile')
        RETURNING l.key, l.namespace, l.state, l.prev_state, l.fingerprint, l.result, l.token, l.claims,
            l.generation, l.lease_until, l.due_at, l.dedup_until, l.evidence, l.reason, l.first_claimed_at,
            l.updated_at
    ), answer AS (
        SELECT i.key, i.namespace, i.state, i.prev_state, i.fingerprint, i.result, i.token, i.claims,
            i.generation, i.lease_until, i.due_at, i.dedup_until, i.evidence, i.reason, i.first_claimed_at,
            i.updated_at, CASE WHEN i.state = 'reconciling' THEN 'reconcile' ELSE 'acquired' END AS verdict,
            false AS stale
        FROM ins AS i
        UNION ALL
        SELECT c.key, c.namespace, c.state, c.prev_state, c.fingerprint, c.result, c.token, c.claims,
            c.generation, c.lease_until, c.due_at, c.dedup_until, c.evidence, c.reason, c.first_claimed_at,
            c.updated_at, c.verdict, c.verdict IN ('acquired', 'reconcile')
        FROM cur AS c
        WHERE NOT EXISTS (SELECT FROM ins)
    )
    SELECT a.key, a.namespace, a.state, a.prev_state, a.fingerprint, a.result, a.token, a.claims,
        a.generation, a.lease_until, a.due_at, a.dedup_until, a.evidence, a.reason, a.first_claimed_at,
        a.updated_at, a.verdict, a.stale
    INTO v
    FROM answer AS a;
    RETURN v;
END
$$;
