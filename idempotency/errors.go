package idempotency

import (
	"errors"
	"fmt"
	"time"
)

// Key errors. A *KeyError wraps ErrInvalidKey and exactly one of the more
// specific sentinels, so callers can match either.
var (
	ErrInvalidKey     = errors.New("idempotency: invalid key")
	ErrEmptyNamespace = errors.New("idempotency: empty namespace")
	ErrNoParts        = errors.New("idempotency: key has no parts")
	ErrEmptyPart      = errors.New("idempotency: empty key part")
	ErrInvalidUTF8    = errors.New("idempotency: key part is not valid UTF-8")
	ErrInvalidName    = errors.New("idempotency: invalid name")
)

// Configuration errors, returned before anything touches the store or the
// provider.
var (
	// ErrInvalidEffect is returned by Run for an effect without a name, a
	// key function or a call.
	ErrInvalidEffect = errors.New("idempotency: invalid effect")
	// ErrNilStore is returned by NewExecutor for a nil store.
	ErrNilStore = errors.New("idempotency: nil store")
)

// Outcome errors: Run returns an error matching one of these whenever the
// Outcome is not Applied, AlreadyApplied or InFlight.
var (
	// ErrRetryable: the provider call failed in a way that may succeed
	// later under the same key; the claim was released.
	ErrRetryable = errors.New("idempotency: retryable failure")
	// ErrPermanent: the provider refused the request; the record was marked
	// failed, which frees the key for a deliberate later run.
	ErrPermanent = errors.New("idempotency: permanent failure")
	// ErrFingerprintMismatch: the key is already used with another payload.
	// The error is a *MismatchError carrying the stored record.
	ErrFingerprintMismatch = errors.New("idempotency: key reused with a different payload")
	// ErrNeedsReconciliation: the outcome of an earlier attempt is unknown
	// and retrying blindly could duplicate the effect (a claim past the
	// provider's dedup window, a parked claim, a replayed provider failure).
	// An operator settles such records; see Store.ListStuck and Store.Settle.
	ErrNeedsReconciliation = errors.New("idempotency: needs reconciliation")
	// ErrClaimLost: the claim's fencing token no longer matches, because the
	// lease expired and another worker took over, or the record was settled.
	// The store changed nothing.
	ErrClaimLost = errors.New("idempotency: claim lost (stale fencing token)")
	// ErrNotFound: no record matches.
	ErrNotFound = errors.New("idempotency: record not found")
	// ErrEncodeResult: the provider call succeeded but its result could not
	// be encoded; the claim stays pending (never an applied record without
	// a result) and the outcome needs reconciliation.
	ErrEncodeResult = errors.New("idempotency: cannot encode result")
	// ErrDecodeResult: a stored result could not be decoded into Out.
	ErrDecodeResult = errors.New("idempotency: cannot decode stored result")
	// ErrSkip is returned (wrapped) by an effect's Call to record that there
	// was nothing to do: the record is stored as skipped, which blocks the
	// key like an applied one.
	ErrSkip = errors.New("idempotency: skipped")
)

// KeyError describes why a key could not be built.
type KeyError struct {
	Namespace string
	Part      string // the offending part's name, if any
	Reason    string
	Err       error // one of the key sentinels
}

func (e *KeyError) Error() string {
	msg := "idempotency: invalid key"
	if e.Namespace != "" {
		msg += " in namespace " + e.Namespace
	}
	if e.Part != "" {
		msg += ", part " + e.Part
	}
	return msg + ": " + e.Reason
}

// Unwrap returns the specific sentinel and ErrInvalidKey.
func (e *KeyError) Unwrap() []error { return []error{e.Err, ErrInvalidKey} }

// MismatchError reports that a key is already held by a record with another
// payload fingerprint. No provider call was made for the new payload.
type MismatchError struct {
	Key    string
	Stored Record // the record already there: its status and result
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("idempotency: key in namespace %s reused with a different payload (stored record is %s)",
		e.Stored.Namespace, e.Stored.Status)
}

// Unwrap returns ErrFingerprintMismatch.
func (e *MismatchError) Unwrap() error { return ErrFingerprintMismatch }

// Class tells the executor what a provider error means for the claim.
type Class uint8

const (
	// ClassUnknown is an error nobody classified. The executor treats it as
	// retryable: the claim is released and the key kept.
	ClassUnknown Class = iota
	// ClassRetryable: nothing durable happened, or the provider will
	// deduplicate the retry under the same key (network errors, 429, 5xx,
	// "request with this key in flight").
	ClassRetryable
	// ClassPermanent: the provider rejected the request; retrying the same
	// request cannot help.
	ClassPermanent
	// ClassMismatch: the provider saw this key with other parameters.
	ClassMismatch
	// ClassReconcile: the provider's answer will never change under this key
	// and the effect's real state is unknown (Stripe replaying a saved 500).
	ClassReconcile
)

func (c Class) String() string {
	switch c {
	case ClassRetryable:
		return "retryable"
	case ClassPermanent:
		return "permanent"
	case ClassMismatch:
		return "mismatch"
	case ClassReconcile:
		return "reconcile"
	default:
		return "unknown"
	}
}

// ProviderError is a classified error from an effect's Call. Adapters
// return it (through Retryable, Permanent, Mismatch, Reconcile) so the
// executor knows whether to release, fail or park the claim.
type ProviderError struct {
	Class Class
	// RetryAfter is the provider's requested delay (Retry-After), or zero.
	RetryAfter time.Duration
	Err        error
}

func (e *ProviderError) Error() string {
	if e.Err == nil {
		return "idempotency: " + e.Class.String() + " provider error"
	}
	return e.Err.Error()
}

// Unwrap returns the cause.
func (e *ProviderError) Unwrap() error { return e.Err }

// Is matches the outcome sentinel of the error's class.
func (e *ProviderError) Is(target error) bool {
	switch target {
	case ErrRetryable:
		return e.Class == ClassRetryable || e.Class == ClassUnknown
	case ErrPermanent:
		return e.Class == ClassPermanent
	case ErrFingerprintMismatch:
		return e.Class == ClassMismatch
	case ErrNeedsReconciliation:
		return e.Class == ClassReconcile
	}
	return false
}

// Retryable marks err as retryable, optionally after the given delay.
func Retryable(err error, after time.Duration) error {
	return &ProviderError{Class: ClassRetryable, RetryAfter: after, Err: err}
}

// Permanent marks err as permanent.
func Permanent(err error) error { return &ProviderError{Class: ClassPermanent, Err: err} }

// Mismatch marks err as the provider's report that the key was used with
// other parameters.
func Mismatch(err error) error { return &ProviderError{Class: ClassMismatch, Err: err} }

// Reconcile marks err as needing reconciliation.
func Reconcile(err error) error { return &ProviderError{Class: ClassReconcile, Err: err} }

// Skip returns an error wrapping ErrSkip, for a Call that decides there is
// nothing to do. The Out value returned with it is stored as the result.
func Skip(reason string) error { return fmt.Errorf("%w: %s", ErrSkip, reason) }

// Classify returns the class of err and its retry delay. Errors that are not
// a *ProviderError are ClassUnknown.
func Classify(err error) (Class, time.Duration) {
	var pe *ProviderError
	if errors.As(err, &pe) {
		return pe.Class, pe.RetryAfter
	}
	return ClassUnknown, 0
}
