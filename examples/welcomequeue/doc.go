// Package welcomequeue sends one welcome email per user from a queue
// consumer, whatever the broker redelivers. A channel stands in for the
// broker: the Consumer reads Deliveries from it and settles each one by
// acking it, asking for a redelivery after a delay, or dead-lettering it.
//
// What it shows:
//
//   - One idempotency.Run per delivery, and the Result's Disposition, not
//     the error, decides the delivery's fate (the table on
//     idempotency.Outcome). A redelivery that arrives while another worker
//     holds the claim is in flight: Run returns a nil error, and the
//     delivery is nacked with the holder's remaining lease as its delay,
//     never acked, because the holder may still fail and then only the
//     redelivery makes the email happen.
//   - The key is the user alone (KeySpace "mail.welcome"), never the
//     message id: a producer that publishes the same signup twice makes two
//     messages and one intent.
//   - The mail API is reached through httpeffect with its defaults for a
//     receiver that deduplicates by the Idempotency-Key header: a worker
//     that dies after sending is taken over under the same key and the API
//     replays its first answer. A refusal (a 4xx) and a payload that
//     changed under a user's key (another address) are dead-lettered.
//   - The welcome_emails row is written in the transaction that records
//     the effect applied (pgguard.OnComplete), guarded by a partial unique
//     index on the user.
//
// Files: schema.sql (the migration), welcome.go (the key and the effect),
// consumer.go (the consumer and its Delivery interface), consumer_test.go
// (redeliveries, refusals, mismatches and 20 concurrent deliveries on
// PostgreSQL against a fake mail API in mailapi_test.go), contract_test.go
// (effecttest and guardtest).
package welcomequeue
