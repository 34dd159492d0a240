-- affpostback: the affiliate network's postback, fired once per conversion.
--
-- The network's receiver ignores idempotency headers: every request it gets
-- counts as a conversion, and pays the affiliate. postbacks is the team's
-- own domain table; its partial unique index allows one DELIVERED postback
-- per conversion. Failed rows (the network refused the request with a 4xx)
-- are exempt: they record the refusal and keep the conversion out of later
-- ticks, and deleting one lets the next tick fire again.

CREATE TABLE IF NOT EXISTS conversions (
    id           text PRIMARY KEY,       -- our order or lead id
    click_id     text NOT NULL,          -- the network's click id
    payout_cents bigint NOT NULL CHECK (payout_cents >= 0),
    currency     text NOT NULL DEFAULT 'USD',
    converted_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS postbacks (
    id              bigserial PRIMARY KEY,
    conversion_id   text NOT NULL REFERENCES conversions (id),
    status          text NOT NULL CHECK (status IN ('delivered', 'failed')),
    http_status     integer,             -- NULL when settled by hand
    idempotency_key text NOT NULL,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_postbacks_active
    ON postbacks (conversion_id)
    WHERE status IN ('delivered');
