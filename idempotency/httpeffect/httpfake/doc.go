// Package httpfake is a fake HTTP receiver for tests of effects sent over
// plain HTTP (package httpeffect): an httptest server on loopback that
// deduplicates by the Idempotency-Key header, as mail, payment and
// partner APIs do, and counts the distinct effects it performed apart
// from the requests it received.
//
//	mail := httpfake.New(nil) // deduplicates by Idempotency-Key; answers 200 {"id":"eff_001"}
//	defer mail.Close()
//	effecttest.Run(t, effecttest.Case[Signup, httpeffect.Response]{
//		Effect:  NewWelcomeEmail(mail.URL()+"/emails"),
//		...
//		Effects: mail.Effects, // distinct effects, never requests
//	})
//
// # What counts as an effect
//
// An effect is what the real receiver would do once per key: send the
// email, make the transfer. The receiver performs one when a request gets
// past every check below and Config.Respond answers it below 400, or when
// FailAfterActing scripted a failure after acting. Effects counts them;
// Requests counts every request received, replays, refusals and conflicts
// included. After a crash, the library sends the same key again and the
// receiver replays its first answer: one effect, two requests. Count
// effects in effecttest.Case.Effects.
//
// # One request, in order
//
// By default (Config.IgnoresKey false) a request that matches
// Config.Pattern goes through these steps; the first that answers ends
// it:
//
//  1. Its key is read (Config.Key; by default the Idempotency-Key header).
//     No key: 400, nothing performed.
//  2. A key the receiver remembers (within Config.Window): with the same
//     body, the first answer, status and body, again, with the header
//     Idempotent-Replayed: true; with another body, 422. Nothing is
//     performed.
//  3. A key another request is still being handled under: 409, nothing
//     performed.
//  4. HoldNext: the request waits until released (its key is in flight
//     meanwhile, so step 3 answers other requests under it).
//  5. A scripted answer for its key (Answer, FailAfterActing,
//     FailAndRemember), else one scripted for any key (AnswerNext), in
//     the order scripted. Answer's statuses are given before acting:
//     nothing is performed or remembered, and the next request under the
//     key may act. FailAfterActing performs the effect and answers the
//     status; FailAndRemember answers it without acting. Both save that
//     answer under the key, so every repeat gets the same status with
//     Idempotent-Replayed: true, as Stripe replays a saved 500.
//  6. Config.Respond: a status of 400 or more refuses the request
//     (nothing performed or remembered); anything else performs the
//     effect and remembers its answer under the key.
//  7. LoseNext: the effect is performed, then the connection is closed
//     after the status line, so the client knows the request was written
//     and never sees the answer.
//
// With Config.IgnoresKey the receiver knows nothing of keys, like an
// affiliate network's postback URL: steps 1 to 3 are skipped, nothing is
// remembered, and every request that Respond accepts (or FailAfterActing
// scripted) is a new effect. Config.Key then only labels requests
// (a query parameter, say) for Answer, RequestsFor and Performed.
//
// Every answer carries a Request-Id header (req_1, req_2, ... in arrival
// order) and Content-Type: application/json. Built-in refusals and
// scripted answers have the body {"error": "<reason>"}.
//
// # Asking the receiver, as a Find would
//
// Performed returns the first effect made under a key, for as long as the
// receiver runs, whether or not it still remembers the key for
// deduplication (Remembers): give it to an effect's Find, or serve it from
// Config.Other as the provider's lookup endpoint.
//
// The Receiver is safe for concurrent use. The package depends on the
// standard library only.
package httpfake
