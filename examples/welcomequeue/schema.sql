-- The welcome emails the service sent: one row per user, written in the
-- transaction that records the effect applied (Effect.OnComplete). The
-- partial unique index allows one sent row per user; a revoked row (an
-- email a user asked to forget) does not block a new one.
CREATE TABLE IF NOT EXISTS welcome_emails (
	id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id    text        NOT NULL,
	email      text        NOT NULL,
	status     text        NOT NULL CHECK (status IN ('sent', 'revoked')),
	message_id text,
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_welcome_emails_active ON welcome_emails (user_id)
	WHERE status IN ('sent');
