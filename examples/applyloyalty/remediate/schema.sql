-- remediate: the plan of a remediation sweep over loyalty_discounts.
--
-- One row per duplicate loyalty_discounts row that the sweep revokes, written
-- when the audit first finds it, under the incident it belongs to. Later runs
-- work from the plan, not from the audit: once a duplicate is revoked the
-- audit no longer shows it, but its user may still be owed the apology and
-- the credit. A duplicate belongs to one incident only (the primary key), so
-- a run under a mistyped incident id cannot plan the same users again and
-- credit them twice.
--
-- No foreign keys to loyalty_discounts: creating one locks that live table
-- against writes until the transaction ends, and a dry run creates this
-- table inside the transaction it rolls back.

CREATE TABLE IF NOT EXISTS loyalty_remediations (
    discount_id       bigint PRIMARY KEY,  -- loyalty_discounts.id of the duplicate, revoked
    incident_id       text NOT NULL,
    user_id           text NOT NULL,
    customer_id       text NOT NULL,       -- the Stripe customer credited (the kept row's subscription)
    promotion_code_id text NOT NULL,       -- the duplicate's code, deactivated at Stripe
    code              text NOT NULL,
    kept_discount_id  bigint NOT NULL,     -- loyalty_discounts.id of the row kept
    kept_code         text NOT NULL,
    planned_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS loyalty_remediations_incident
    ON loyalty_remediations (incident_id, user_id);
