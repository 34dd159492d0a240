-- magiclink: one magic-link email per login request.
--
-- A login request is the intent: the login form carries its id (made when
-- the form is rendered), so a double-clicked "send link" or a retried
-- handler is the same login request, and a new visit to the form is a new
-- one. The link's token is generated once and stored here before any email
-- is sent; every attempt builds the email from this row, so a retry never
-- mails a different token.
--
-- login_emails is the team's own domain table; its partial unique index
-- allows one SENT email per login request. Failed rows (the provider
-- refused the address) are exempt.

CREATE TABLE IF NOT EXISTS login_requests (
    id         text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{16,64}$'),
    email      text NOT NULL,
    -- The link's secret: 32 random bytes, base64url. Kept until the link
    -- is used or expires, because a retried send must mail this very token.
    token      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE INDEX IF NOT EXISTS login_requests_unsent ON login_requests (expires_at) WHERE used_at IS NULL;

CREATE TABLE IF NOT EXISTS login_emails (
    id               bigserial PRIMARY KEY,
    login_request_id text NOT NULL REFERENCES login_requests (id),
    status           text NOT NULL CHECK (status IN ('sent', 'failed')),
    message_id       text,                -- the provider's id; NULL unless sent
    idempotency_key  text NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS uq_login_emails_active
    ON login_emails (login_request_id)
    WHERE status IN ('sent');
