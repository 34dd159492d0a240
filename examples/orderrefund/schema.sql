-- orderrefund: one Stripe refund per refund request.
--
-- Support files refund requests against an order; a queue delivers each one
-- at least once and a tick sweeps up the ones the queue missed. refunds is
-- the team's own domain table. Its partial unique index allows one ACTIVE
-- row per refund request:
--
--   reserved   the amount is held on the order and Stripe is being asked
--              (or was asked and did not answer: the amount stays held)
--   pending    Stripe accepted the refund; the money is on its way
--   succeeded  Stripe refunded it
--   failed     refused, by us (over the amount paid) or by Stripe: exempt
--              from the index, and holds no amount
--
-- The active rows of an order never add up to more than it paid: they are
-- written under the order's row lock (see reserve in orderrefund.go).

CREATE TABLE IF NOT EXISTS orders (
    id                text PRIMARY KEY,
    payment_intent_id text NOT NULL UNIQUE,  -- the Stripe payment
    amount_paid_cents bigint NOT NULL CHECK (amount_paid_cents > 0),
    currency          text NOT NULL
);

CREATE TABLE IF NOT EXISTS refund_requests (
    id           text PRIMARY KEY,
    order_id     text NOT NULL REFERENCES orders (id),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),  -- never 0: Stripe reads "no amount" as "all that is left"
    reason       text NOT NULL DEFAULT 'requested_by_customer'
                 CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    requested_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS refunds (
    id                bigserial PRIMARY KEY,
    order_id          text NOT NULL REFERENCES orders (id),
    refund_request_id text NOT NULL REFERENCES refund_requests (id),
    stripe_refund_id  text,                  -- NULL while reserved, and when refused before the call
    amount_cents      bigint NOT NULL CHECK (amount_cents > 0),
    currency          text NOT NULL,
    status            text NOT NULL CHECK (status IN ('reserved', 'pending', 'succeeded', 'failed')),
    failure_reason    text,
    idempotency_key   text NOT NULL,         -- find the refund at Stripe (metadata) when reconciling
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_stripe_id_check
        CHECK (status = 'failed' OR (status = 'reserved') = (stripe_refund_id IS NULL))
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_refunds_active
    ON refunds (refund_request_id)
    WHERE status IN ('reserved', 'pending', 'succeeded');

-- One row per Stripe refund: a refund is never recorded for two requests.
CREATE UNIQUE INDEX IF NOT EXISTS uq_refunds_stripe_refund ON refunds (stripe_refund_id);

CREATE INDEX IF NOT EXISTS ix_refunds_order ON refunds (order_id);
