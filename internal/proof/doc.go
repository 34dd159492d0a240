// Package proof holds the tests that prove "one intent, one effect" the way
// a skeptic would: several OS processes on one key set, workers killed with
// SIGKILL at every step boundary, provider and database faults, and the
// provider's dedup window running out. Every test counts the effect where
// it lands (objects created at the fake Stripe) and reads the ledger back,
// rather than trusting what the code returned.
//
// It has no API; docs/guarantees.md lists what each test proves.
package proof
