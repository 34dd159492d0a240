-- payout: one money transfer per payout request.
--
-- The payouts provider takes its idempotency key only as a UUID, in the
-- request body (client_transaction_id), and deduplicates transfers by it.
-- payout_transfers is the team's own domain table; its partial unique index
-- allows one SENT transfer per payout request. Failed rows (the provider
-- refused the request: an unknown recipient, a closed account) are exempt:
-- they record the refusal and keep the request out of later ticks.

CREATE TABLE IF NOT EXISTS payout_requests (
    id           text PRIMARY KEY,        -- our payout request id
    recipient    text NOT NULL,           -- the provider's recipient account id
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    currency     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS payout_transfers (
    id                    bigserial PRIMARY KEY,
    payout_id             text NOT NULL REFERENCES payout_requests (id),
    status                text NOT NULL CHECK (status IN ('sent', 'failed')),
    transfer_id           text,           -- the provider's id; NULL unless sent
    -- The UUID the provider deduplicated by: Key.UUID() of the provider-key
    -- generation that made the transfer (the first, unless a saved failure
    -- forced a new generation).
    client_transaction_id uuid,
    -- The UUID of the business key (Key.Base().UUID()), the same for every
    -- generation: what Find lists transfers by.
    reference             uuid NOT NULL,
    idempotency_key       text NOT NULL,  -- the ledger's key (the business key)
    reason                text,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_payout_transfers_active
    ON payout_transfers (payout_id)
    WHERE status IN ('sent');
