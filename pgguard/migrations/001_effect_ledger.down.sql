-- Reverts 001_effect_ledger.up.sql: drops the ledger and everything in it.
DROP TABLE IF EXISTS effect_ledger;
DROP SEQUENCE IF EXISTS effect_ledger_token_seq;
