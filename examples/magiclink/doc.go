// Package magiclink sends one magic-link email per login request, through
// an email provider that deduplicates by the Idempotency-Key header (as
// Resend and Postmark do), reached with package httpeffect. It
// demonstrates hazards 1, 7 and 5 of docs/hazards.md: the key is the
// login request, the one identity a double click and a retried handler
// share and a new login request does not; the email's content (its token)
// is fixed before the first call, so no retry sends the same key with
// another payload; and a crash after the email went out is repaired by the
// provider's replay. Storing the login request is hazard 4's statement.
//
// What it shows:
//
//   - The intent is the login request, not the user or the address: the
//     login form carries a request id made when it is rendered
//     (NewRequestID), so a double-clicked "send link" and a browser or
//     handler retry submit the same id, while loading the form again
//     makes a new login request and a new email. The key is that id
//     (KeySpace "auth.magiclink"); a key of user + address would stop the
//     second, legitimate login forever, and a key with the clock in it
//     would send two emails to a double click at a bucket boundary.
//   - The token is generated once, in Start, and stored in the
//     login_requests row before any email is sent. Start is one statement,
//     INSERT ... ON CONFLICT (id) DO UPDATE with a no-op update, so a
//     concurrent submission of the same id gets the stored row back (its
//     token), never a row of its own and never no row (hazard 4). The
//     email is built from the stored row only: every attempt and every
//     redelivery sends the same bytes, token included, so the provider's
//     replay and the effect's fingerprint (the request's method, URL and
//     body) both hold. Had each attempt drawn its own token, the second
//     attempt would be a key reused with another body (a 422 from the
//     provider, a mismatch in the ledger), or worse, a second email whose
//     link does not match the first.
//   - httpeffect's defaults for a provider that deduplicates: ExpiredRetry
//     within a 24-hour DedupWindow. A handler killed after the provider
//     answered leaves its claim; the next submission after the lease (one
//     minute) takes it over and sends the stored email again under the
//     same key; the provider replays the first message and sends nothing.
//     A link lives 15 minutes (DefaultTTL), far inside the window.
//   - The token is stored in clear because a retry must mail that very
//     token; it works once (Redeem marks it used) and expires with the
//     login request. A team that keeps only a hash of the token must keep
//     an encrypted copy for retries instead, or give up retries.
//   - Handler answers the form: 200 once the email is sent or was sent
//     before, 202 when another submission is sending it (in flight), 503
//     with Retry-After when the provider asked to wait, 400 for a
//     malformed form, 409 for a request id reused with another address,
//     410 for a used or expired request; the table is on Handler.
//   - Tick is the catch-up: it sends, while they are valid, the links a
//     handler could not send (the provider was down, the process died). It
//     shares the key with the handler, so they never send two.
//   - Statuses of login_emails: sent is active and guarded by
//     uq_login_emails_active; failed (the provider refused the address) is
//     exempt.
//
// Files: schema.sql (the migration), magiclink.go (login requests, the
// effect, the handler, the tick, redeeming), magiclink_test.go and
// contract_test.go (integration tests on PostgreSQL against a fake email
// provider written in provider_test.go).
package magiclink
