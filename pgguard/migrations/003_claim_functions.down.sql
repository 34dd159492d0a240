-- Reverts 003_claim_functions.up.sql: the claim function and the claim rule
-- go; the table is unchanged. A store of version 2 renders the claim
-- statement itself.
DROP FUNCTION IF EXISTS effect_ledger_claim(text, text, bytea, bigint, boolean, bigint, timestamptz, boolean, boolean, regclass);
DROP TYPE IF EXISTS effect_ledger_claimed;
DROP FUNCTION IF EXISTS effect_ledger_decide(text, bytea, timestamptz, timestamptz, timestamptz, timestamptz, bytea, bigint, boolean, bigint, boolean, timestamptz);
