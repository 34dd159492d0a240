-- threshold1099: the 1099 threshold notice.
--
-- A payee whose payouts in one tax year reach $600 gets one notice for that
-- year by email. threshold_notices is the team's own domain table; its
-- partial unique index allows one ACTIVE notice per payee and tax year.
-- Revoked rows (a notice withdrawn by hand) and failed rows (the provider
-- refused the address) are exempt, so they never block a notice that is
-- really owed.
--
-- The tax year is business data: payouts.tax_year is derived from paid_at
-- in the tax time zone, America/New_York, here and nowhere else. A payout
-- at 2026-01-01 03:00 UTC (22:00 on December 31 in New York) belongs to
-- tax year 2025.

CREATE TABLE IF NOT EXISTS payees (
    id    text PRIMARY KEY,
    name  text NOT NULL,
    email text                              -- NULL: no address on file
);

CREATE TABLE IF NOT EXISTS payouts (
    id           bigserial PRIMARY KEY,
    payee_id     text NOT NULL REFERENCES payees (id),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    paid_at      timestamptz NOT NULL,
    tax_year     integer NOT NULL
        GENERATED ALWAYS AS (extract(year FROM paid_at AT TIME ZONE 'America/New_York')::integer) STORED
);

CREATE INDEX IF NOT EXISTS payouts_payee_tax_year ON payouts (payee_id, tax_year);

CREATE TABLE IF NOT EXISTS threshold_notices (
    id               bigserial PRIMARY KEY,
    payee_id         text NOT NULL REFERENCES payees (id),
    tax_year         integer NOT NULL,
    -- sent: emailed; skipped: no address on file (the paper process takes
    -- it from here); failed: the provider refused the address; revoked:
    -- withdrawn by hand.
    status           text NOT NULL CHECK (status IN ('sent', 'skipped', 'failed', 'revoked')),
    email            text,                  -- the address used (or refused)
    message_id       text,                  -- the provider's id; NULL unless sent
    year_total_cents bigint NOT NULL,       -- the year's payouts when the notice was decided
    idempotency_key  text NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_threshold_notices_active
    ON threshold_notices (payee_id, tax_year)
    WHERE status IN ('sent', 'skipped');
