-- checkoutwebhook: provision once per paid Stripe Checkout Session.
--
-- Stripe delivers each event at least once, retries anything but a 2xx
-- for up to three days, and sends two different events for one checkout
-- when the payment settles later (checkout.session.completed, then
-- checkout.session.async_payment_succeeded). The provisioning is keyed by
-- the checkout session, never by the event.
--
-- stripe_events is the audit trail: every verified event, once per event
-- id (INSERT ... ON CONFLICT (event_id) DO NOTHING), written before the
-- provisioning runs and in its own statement, so that an event is on
-- record whatever the provisioning does in that delivery (in flight
-- elsewhere, failed, already done by another event). Each delivery then
-- notes how it was answered.
--
-- provisionings is the team's own domain table; its partial unique index
-- allows one PROVISIONED row per checkout session. Failed rows (the
-- license service refused) and revoked rows (refunded, revoked by hand)
-- are exempt.

CREATE TABLE IF NOT EXISTS stripe_events (
    event_id            text PRIMARY KEY,
    type                text NOT NULL,
    checkout_session_id text,                -- NULL for types this endpoint does not handle
    paid                boolean NOT NULL DEFAULT false, -- the session was paid as of this event
    session             jsonb,               -- the event's data.object, for the catch-up tick
    stripe_created_at   timestamptz NOT NULL, -- the event's created
    received_at         timestamptz NOT NULL,
    deliveries          integer NOT NULL DEFAULT 0,
    -- How the last delivery was handled: the run's outcome (applied,
    -- already_applied, in_flight, ...) or ignored, awaiting_payment,
    -- unprovisionable; its disposition (ack, retry, dead_letter); the
    -- error, if any.
    last_outcome        text,
    last_disposition    text CHECK (last_disposition IN ('ack', 'retry', 'dead_letter')),
    last_error          text,
    handled_at          timestamptz
);

CREATE INDEX IF NOT EXISTS stripe_events_session ON stripe_events (checkout_session_id);

-- What an operator reads: the events no redelivery can help.
CREATE INDEX IF NOT EXISTS stripe_events_dead_letters ON stripe_events (handled_at)
    WHERE last_disposition = 'dead_letter';

CREATE TABLE IF NOT EXISTS provisionings (
    id                  bigserial PRIMARY KEY,
    checkout_session_id text NOT NULL,
    status              text NOT NULL CHECK (status IN ('provisioned', 'failed', 'revoked')),
    account_id          text NOT NULL,       -- our account: the session's client_reference_id
    plan                text NOT NULL,
    seats               integer NOT NULL CHECK (seats > 0),
    license_id          text,                -- the license service's id; NULL unless provisioned
    event_id            text NOT NULL REFERENCES stripe_events (event_id), -- the delivery that provisioned
    idempotency_key     text NOT NULL,
    reason              text,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_provisionings_active
    ON provisionings (checkout_session_id)
    WHERE status IN ('provisioned');
