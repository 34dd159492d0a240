-- applyloyalty: the anniversary loyalty bonus.
--
-- A Pro subscriber who completes 12 months gets one 10% promotion code.
-- loyalty_discounts is the team's own domain table; its partial unique index
-- allows one ACTIVE discount per user. Revoked rows are exempt, so a user
-- whose code was revoked (cancelled subscription) can earn a fresh one on a
-- new subscription.

CREATE TABLE IF NOT EXISTS subscriptions (
    id           text PRIMARY KEY,
    user_id      text NOT NULL,
    customer_id  text NOT NULL,          -- the Stripe customer
    plan         text NOT NULL,          -- 'pro', 'basic'
    started_at   timestamptz NOT NULL,
    cancelled_at timestamptz
);

CREATE TABLE IF NOT EXISTS loyalty_discounts (
    id                bigserial PRIMARY KEY,
    user_id           text NOT NULL,
    subscription_id   text NOT NULL REFERENCES subscriptions (id),
    milestone         integer NOT NULL,
    promotion_code_id text NOT NULL,
    code              text NOT NULL,
    status            text NOT NULL CHECK (status IN ('applied', 'skipped', 'revoked')),
    idempotency_key   text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_loyalty_discounts_active
    ON loyalty_discounts (user_id)
    WHERE status IN ('applied', 'skipped');
